"""Mutual TLS trust kept current in ACME mode: ``[tls] client_ca`` is polled and re-read on
SIGHUP as in PEM mode, a bad bundle keeps the trust in service (warning, ``tls.reload_refused``,
``reload_refused`` in the status). Real handshakes (OpenSSL over memory BIOs) with client
certificates from test CAs; the ACME provider serves a certificate seeded in its cache, so no
CA is contacted."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
from certkit import TestCA, write_atomic
from cryptography.x509.oid import ExtendedKeyUsageOID

from ferrohsm.domain.errors import ConfigError
from ferrohsm.tls.acme.cache import AcmeCache
from ferrohsm.tls.acme.provider import AcmeOptions, AcmeProvider, directory_url

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
