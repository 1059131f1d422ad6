"""Mutual TLS trust kept current: in ACME mode ``[tls] client_ca`` is polled and re-read on
SIGHUP as in PEM mode, a bad bundle keeps the trust in service (warning, ``tls.reload_refused``,
``reload_refused`` in the status); ``[tls] client_crl`` refuses revoked client certificates,
is reloaded with the bundle, and a stale or malformed CRL is said. Real handshakes (OpenSSL over memory BIOs) with client
certificates from test CAs; the ACME provider serves a certificate seeded in its cache, so no
CA is contacted."""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tlsserver
from certkit import Leaf, TestCA, install, now, wait_for, write_atomic
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from tlsserver import TlsServer

from ferrohsm.config import load_config
from ferrohsm.domain.errors import ConfigError
from ferrohsm.tls.acme.cache import AcmeCache
from ferrohsm.tls.acme.provider import AcmeOptions, AcmeProvider, directory_url
from ferrohsm.tls.context import ReloadingContext

DIRECTORY = "https://127.0.0.1:9/directory"  # never contacted: the provider is not started
DOMAINS = ("hsm.test",)


def accepts(server: ssl.SSLContext, client_ca: TestCA, tmp_path: Path) -> bool:
    """Whether ``server`` completes a TLS 1.3 handshake with a client certificate from
    ``client_ca`` (the server decides after the client's Finished, so its side is asked)."""
    leaf = client_ca.leaf(("client",), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    (tmp_path / "c.pem").write_bytes(leaf.chain_pem)
    (tmp_path / "c-key.pem").write_bytes(leaf.key_pem)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    client.load_cert_chain(tmp_path / "c.pem", tmp_path / "c-key.pem")
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_obj = client.wrap_bio(c_in, c_out, server_hostname=DOMAINS[0])
    server_obj = server.wrap_bio(s_in, s_out, server_side=True)
    done: set[int] = set()
    for _ in range(10):
        for index, (obj, out_bio, peer_in) in enumerate(((client_obj, c_out, s_in),
                                                         (server_obj, s_out, c_in))):
            try:
                obj.do_handshake()
                done.add(index)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return False
            peer_in.write(out_bio.read())
        if 1 in done:
            return True
    raise AssertionError("handshake did not complete")


@pytest.fixture
def acme(tmp_path: Path) -> tuple[Path, list[tuple[str, dict[str, Any]]], AcmeProvider,
                                   TestCA, TestCA]:
    served = TestCA(tmp_path / "server-ca").leaf(DOMAINS)
    cache_dir = tmp_path / "acme"
    AcmeCache(str(cache_dir)).save_cert(directory_url(DIRECTORY), DOMAINS, served.chain_pem,
                                        served.key_pem)
    old_ca, new_ca = TestCA(tmp_path / "old"), TestCA(tmp_path / "new")
    bundle = tmp_path / "clients.pem"
    write_atomic(bundle, old_ca.cert_file.read_bytes(), 0o644)
    heard: list[tuple[str, dict[str, Any]]] = []
    provider = AcmeProvider(AcmeOptions(
        DIRECTORY, DOMAINS, "", "http-01", "127.0.0.1:0", "", str(cache_dir), 0.33,
        client_ca=str(bundle), require_client_cert=True, reload_seconds=0.1),
        lambda event, fields: heard.append((event, dict(fields))))
    assert provider.status()["acme"]["state"] == "serving"
    return bundle, heard, provider, old_ca, new_ca


def test_acme_mode_polls_client_ca(acme: Any, tmp_path: Path) -> None:
    bundle, heard, provider, old_ca, new_ca = acme
    assert accepts(provider(), old_ca, tmp_path) and not accepts(provider(), new_ca, tmp_path)
    assert not provider.check()  # unchanged: nothing to do
    write_atomic(bundle, new_ca.cert_file.read_bytes(), 0o644)
    assert provider.check()
    assert accepts(provider(), new_ca, tmp_path) and not accepts(provider(), old_ca, tmp_path)
    assert [event for event, _ in heard] == ["tls.client_ca_reloaded"]


def test_acme_mode_refuses_a_bad_bundle_and_keeps_the_trust(
        acme: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bundle, heard, provider, old_ca, new_ca = acme
    write_atomic(bundle, b"-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n",
                 0o644)
    with caplog.at_level(logging.WARNING, logger="ferrohsm.tls"):
        for _ in range(5):  # the first poll waits for the rest of the file; then one warning
            assert not provider.check()
    assert [(e, f["reason"]) for e, f in heard] == [("tls.reload_refused", "unparsable")]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert provider.status()["reload_refused"] == "unparsable"
    assert accepts(provider(), old_ca, tmp_path)  # the trust in service stands
    write_atomic(bundle, old_ca.cert_file.read_bytes() + new_ca.cert_file.read_bytes(), 0o644)
    assert provider.reload("SIGHUP")  # SIGHUP looks at once
    assert "reload_refused" not in provider.status()
    assert accepts(provider(), old_ca, tmp_path) and accepts(provider(), new_ca, tmp_path)


def test_sighup_refuses_a_bad_bundle_at_once(acme: Any, tmp_path: Path) -> None:
    bundle, heard, provider, old_ca, _ = acme
    bundle.unlink()
    assert not provider.reload("SIGHUP")
    assert heard[-1][0] == "tls.reload_refused" and heard[-1][1]["reason"] == "unreadable"
    assert accepts(provider(), old_ca, tmp_path)


def test_acme_mode_with_an_unreadable_client_ca_does_not_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^tls\.client_ca: cannot read"):
        AcmeProvider(AcmeOptions(DIRECTORY, DOMAINS, "", "http-01", "127.0.0.1:0", "",
                                 str(tmp_path / "acme"), 0.33,
                                 client_ca=str(tmp_path / "none.pem")))


# ------------------------------------------------------------------ [tls] client_crl

def make_crl(ca: TestCA, revoked: tuple[x509.Certificate, ...] = (), *,
             next_update: dt.timedelta = dt.timedelta(days=1)) -> bytes:
    """A real CRL of ``ca`` (cryptography's builder), revoking ``revoked``."""
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
               .last_update(now() - dt.timedelta(hours=2))
               .next_update(now() + next_update))
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
            .revocation_date(now() - dt.timedelta(hours=1)).build())
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(Encoding.PEM)


def answered(srv: TlsServer, leaf: Leaf, tmp_path: Path) -> bool:
    """Whether a request with ``leaf`` as client certificate gets an HTTP answer."""
    return tlsserver.answered(srv, leaf.chain_pem, leaf.key_pem, tmp_path)


@pytest.fixture
def crl_server(tmp_path: Path) -> Iterator[tuple[TlsServer, TestCA, Path]]:
    ca, clients = TestCA(tmp_path / "ca"), TestCA(tmp_path / "clients")
    live = tmp_path / "live"
    live.mkdir()
    install(ca.leaf(), live / "server.pem", live / "server-key.pem")
    crl = tmp_path / "clients-crl.pem"
    write_atomic(crl, make_crl(clients), 0o644)
    srv = TlsServer(tmp_path, live / "server.pem", live / "server-key.pem", ca.cert_file,
                    client_ca=str(clients.cert_file), client_crl=str(crl),
                    require_client_cert=True, reload_seconds=0.1)
    yield srv, clients, crl
    srv.close()


def client(ca: TestCA) -> Leaf:
    return ca.leaf(("client",), usage=ExtendedKeyUsageOID.CLIENT_AUTH)


def test_a_revoked_client_certificate_is_refused_and_a_new_crl_is_polled(
        crl_server: tuple[TlsServer, TestCA, Path], tmp_path: Path) -> None:
    srv, clients, crl = crl_server
    alice, bob = client(clients), client(clients)
    assert answered(srv, alice, tmp_path) and answered(srv, bob, tmp_path)
    assert srv.provider.status()["client_crl_expired"] == 0
    write_atomic(crl, make_crl(clients, (bob.cert,)), 0o644)  # bob is revoked
    wait_for(lambda: srv.events("tls.client_ca_reloaded"), 10, "the new CRL")
    assert answered(srv, alice, tmp_path) and not answered(srv, bob, tmp_path)


def test_a_bad_crl_keeps_the_one_in_service(
        crl_server: tuple[TlsServer, TestCA, Path], tmp_path: Path) -> None:
    srv, clients, crl = crl_server
    alice = client(clients)
    stranger = TestCA(tmp_path / "stranger")  # a CRL no CA of the bundle signed
    write_atomic(crl, make_crl(stranger, (alice.cert,)), 0o644)
    wait_for(lambda: srv.events("tls.reload_refused"), 10, "the refusal")
    assert srv.events("tls.reload_refused")[0]["details"]["reason"] == "untrusted_issuer"
    assert srv.provider.status()["reload_refused"] == "untrusted_issuer"
    assert answered(srv, alice, tmp_path)


def test_a_crl_past_its_next_update_is_warned_about_and_counted(
        crl_server: tuple[TlsServer, TestCA, Path], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """OpenSSL refuses every client of a CA whose CRL is stale (fail closed, kept): said."""
    srv, clients, crl = crl_server
    with caplog.at_level(logging.WARNING, logger="ferrohsm.tls"):
        write_atomic(crl, make_crl(clients, next_update=-dt.timedelta(minutes=1)), 0o644)
        wait_for(lambda: srv.events("tls.client_ca_reloaded"), 10, "the stale CRL")
    assert any("past nextUpdate" in r.getMessage() for r in caplog.records)
    assert srv.provider.status()["client_crl_expired"] == 1
    assert not answered(srv, client(clients), tmp_path)


def test_a_malformed_or_orphan_crl_stops_start_up(tmp_path: Path) -> None:
    ca, clients = TestCA(tmp_path / "ca"), TestCA(tmp_path / "clients")
    leaf = ca.leaf()
    install(leaf, tmp_path / "s.pem", tmp_path / "s-key.pem")
    crl = tmp_path / "crl.pem"
    crl.write_bytes(b"-----BEGIN X509 CRL-----\nnot one\n-----END X509 CRL-----\n")
    with pytest.raises(ConfigError, match=r"^tls\.client_crl: .*crl\.pem"):
        ReloadingContext(tmp_path / "s.pem", tmp_path / "s-key.pem", clients.cert_file,
                         client_crl=crl)
    with pytest.raises(ConfigError, match=r"client_crl needs \[tls\]\.client_ca"):
        load_config(None, env={}, overrides={("tls", "client_crl"): str(crl),
                                              ("tls", "cert"): str(tmp_path / "s.pem"),
                                              ("tls", "key"): str(tmp_path / "s-key.pem")})


def test_before_the_first_certificate_a_new_bundle_applies_to_the_placeholder(
        tmp_path: Path) -> None:
    """The placeholder serves the whole API until ACME issues a certificate: a CA taken out
    of the bundle must stop being trusted then too (the reload was announced, not applied)."""
    old_ca, new_ca = TestCA(tmp_path / "old"), TestCA(tmp_path / "new")
    bundle = tmp_path / "clients.pem"
    write_atomic(bundle, old_ca.cert_file.read_bytes(), 0o644)
    provider = AcmeProvider(AcmeOptions(
        DIRECTORY, DOMAINS, "", "http-01", "127.0.0.1:0", "", str(tmp_path / "acme"), 0.33,
        client_ca=str(bundle), require_client_cert=True, reload_seconds=0.1))
    assert provider.status()["acme"]["state"] != "serving"  # no certificate: the placeholder
    assert accepts(provider(), old_ca, tmp_path) and not accepts(provider(), new_ca, tmp_path)
    write_atomic(bundle, new_ca.cert_file.read_bytes(), 0o644)
    assert provider.check()
    assert accepts(provider(), new_ca, tmp_path) and not accepts(provider(), old_ca, tmp_path)


def test_a_bundle_only_openssl_reads_is_refused_with_crls_not_a_traceback(
        tmp_path: Path) -> None:
    """With client_crl the bundle's CAs are read to check the CRLs' issuers: OpenSSL's
    TRUSTED CERTIFICATE blocks, which cryptography cannot read, are a clear refusal."""
    ca = TestCA(tmp_path / "ca")
    bundle = tmp_path / "trusted.pem"
    body = ca.cert_file.read_bytes().replace(b"BEGIN CERTIFICATE", b"BEGIN TRUSTED CERTIFICATE")
    bundle.write_bytes(body.replace(b"END CERTIFICATE", b"END TRUSTED CERTIFICATE"))
    crl = tmp_path / "clients.crl"
    crl.write_bytes(make_crl(ca))
    from ferrohsm.tls.pair import PairRefused
    from ferrohsm.tls.trust import ClientTrust
    with pytest.raises(PairRefused, match="must be plain PEM certificates"):
        ClientTrust(bundle, crl).check()
