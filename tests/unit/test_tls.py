"""TLS contexts, certificate hot reload, the x5t#S256 fingerprint and the development PKI."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import shutil
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ferrohsm.domain.errors import ConfigError
from ferrohsm.tls import devpki as devca
from ferrohsm.tls.context import (
    ReloadingContext,
    cert_fingerprint,
    client_context,
    server_context,
)
from ferrohsm.tls.devpki import DevPki, make_dev_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return make_dev_pki(tmp_path_factory.mktemp("pki"))


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# ------------------------------------------------------------------ contexts


def test_server_context_is_tls13_only_without_compression(pki: DevPki) -> None:
    context = server_context(pki.server_cert, pki.server_key)
    assert context.minimum_version == context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.verify_mode == ssl.CERT_NONE


def test_client_ca_makes_client_certs_optional_or_required(pki: DevPki) -> None:
    optional = server_context(pki.server_cert, pki.server_key, client_ca=pki.ca_cert)
    required = server_context(pki.server_cert, pki.server_key, client_ca=pki.ca_cert,
                              require_client_cert=True)
    assert optional.verify_mode == ssl.CERT_OPTIONAL
    assert required.verify_mode == ssl.CERT_REQUIRED


def test_require_client_cert_without_ca_is_a_config_error(pki: DevPki) -> None:
    with pytest.raises(ConfigError, match="client_ca"):
        server_context(pki.server_cert, pki.server_key, require_client_cert=True)


def test_unloadable_key_names_the_file_but_not_its_content(pki: DevPki, tmp_path: Path) -> None:
    bad_key = tmp_path / "bad-key.pem"
    bad_key.write_text("-----BEGIN PRIVATE KEY-----\nSECRETSECRET\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError) as info:
        server_context(pki.server_cert, bad_key)
    assert "bad-key.pem" in info.value.message and "SECRETSECRET" not in info.value.message


def test_client_context_is_tls13_only_and_checks_hostnames(pki: DevPki) -> None:
    context = client_context(pki.ca_cert)
    assert context.minimum_version == context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


def test_client_context_loads_a_client_certificate(pki: DevPki) -> None:
    cert, key = pki.issue_client_cert("unit-client")
    client_context(pki.ca_cert, cert, key)  # raises if the pair does not load


def test_cert_fingerprint_is_unpadded_base64url_sha256() -> None:
    # SHA-256("abc") = ba7816bf...; base64url without '=' padding (RFC 8705 x5t#S256).
    assert cert_fingerprint(b"abc") == "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"


# ------------------------------------------------------------------ hot reload


def copy_pki(source: DevPki, target: Path) -> tuple[Path, Path]:
    target.mkdir()
    cert, key = target / "server.pem", target / "server-key.pem"
    shutil.copy(source.server_cert, cert)
    shutil.copy(source.server_key, key)
    return cert, key


def replace_files(cert: Path, key: Path, source: DevPki) -> None:
    for src, dst in ((source.server_cert, cert), (source.server_key, key)):
        tmp = dst.with_suffix(".new")
        shutil.copy(src, tmp)
        os.replace(tmp, dst)  # new inode: detected even within one mtime tick


def served_cert(context: ssl.SSLContext) -> bytes:
    """The certificate a context would present (read back through a memory handshake)."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_obj = client.wrap_bio(c_in, c_out)
    server_obj = context.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = []
        for obj, out_bio, peer_in in ((client_obj, c_out, s_in), (server_obj, s_out, c_in)):
            try:
                obj.do_handshake()
                done.append(obj)
            except ssl.SSLWantReadError:
                pass
            peer_in.write(out_bio.read())
        if client_obj in done:
            der = client_obj.getpeercert(binary_form=True)
            assert der is not None
            return der
    raise AssertionError("handshake did not complete")


def test_reloading_context_picks_up_new_files(pki: DevPki, tmp_path: Path) -> None:
    cert, key = copy_pki(pki, tmp_path / "live")
    other = make_dev_pki(tmp_path / "other")
    reloading = ReloadingContext(cert, key)
    first = reloading()
    assert isinstance(first, ssl.SSLContext)
    assert served_cert(first) == ssl.PEM_cert_to_DER_cert(pki.server_cert.read_text())
    replace_files(cert, key, other)
    assert reloading() is first  # nothing happens between polls
    assert reloading.check()
    second = reloading()
    assert second is not first and isinstance(second, ssl.SSLContext)
    assert served_cert(second) == ssl.PEM_cert_to_DER_cert(other.server_cert.read_text())
    assert not reloading.check() and reloading() is second  # unchanged files: same context


def test_broken_pem_keeps_old_context_and_warns_once(pki: DevPki, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    cert, key = copy_pki(pki, tmp_path / "live")
    reloading = ReloadingContext(cert, key)
    first = reloading()
    key.write_text("-----BEGIN PRIVATE KEY-----\nTOPSECRET\n")  # half-written
    with caplog.at_level(logging.WARNING, logger="ferrohsm.tls"):
        for _ in range(4):
            assert not reloading.check()
            assert reloading() is first
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the first poll waits for the other half, the second refuses
    assert "TOPSECRET" not in warnings[0].getMessage()
    assert reloading.status()["reload_refused"] == "unparsable"


def test_missing_file_keeps_old_context(pki: DevPki, tmp_path: Path) -> None:
    cert, key = copy_pki(pki, tmp_path / "live")
    reloading = ReloadingContext(cert, key)
    first = reloading()
    key.unlink()
    assert not reloading.check() and not reloading.check()
    assert reloading() is first
    assert reloading.status()["reload_refused"] == "unreadable"


def test_reloading_context_fails_fast_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        ReloadingContext(tmp_path / "none.pem", tmp_path / "none-key.pem")


def test_a_missing_client_ca_is_named_as_such_at_start(pki: DevPki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^tls\.client_ca: cannot read .*none\.pem"):
        ReloadingContext(pki.server_cert, pki.server_key, client_ca=tmp_path / "none.pem")


# ------------------------------------------------------------------ dev PKI


def test_dev_pki_files_and_permissions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    modes: dict[str, int] = {}
    real_open = os.open

    def spy(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        modes[os.fspath(path)] = mode
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", spy)
    old_umask = os.umask(0)  # show the modes come from os.open, not from a kind umask
    try:
        pki = make_dev_pki(tmp_path / "pki")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    for key in (pki.ca_key, pki.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    key_opens = [mode for path, mode in modes.items() if "-key.pem" in path]
    assert key_opens and all(mode == 0o600 for mode in key_opens)
    assert stat.S_IMODE(pki.server_cert.stat().st_mode) == 0o644
    assert not list(pki.directory.glob(".*.tmp"))


def test_dev_ca_certificate(pki: DevPki) -> None:
    ca = load(pki.ca_cert)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3651)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]  # an EC key, else the test fails


def test_dev_server_certificate(pki: DevPki) -> None:
    cert = load(pki.server_cert)
    cert.verify_directly_issued_by(load(pki.ca_cert))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=364) < lifetime < dt.timedelta(days=366)


def test_dev_pki_is_reused_on_restart(tmp_path: Path) -> None:
    first = make_dev_pki(tmp_path / "pki")
    before = {p: p.read_bytes() for p in (first.ca_cert, first.server_cert, first.server_key)}
    second = make_dev_pki(tmp_path / "pki")
    assert {p: p.read_bytes() for p in before} == before
    assert second == first


def test_server_cert_reissued_under_same_ca_when_hosts_change(tmp_path: Path) -> None:
    first = make_dev_pki(tmp_path / "pki")
    ca_before, server_before = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    make_dev_pki(tmp_path / "pki", hosts=("127.0.0.1", "hsm.internal"))
    assert first.ca_cert.read_bytes() == ca_before
    assert first.server_cert.read_bytes() != server_before
    sans = load(first.server_cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "hsm.internal" in sans.get_values_for_type(x509.DNSName)


def test_corrupt_server_key_is_regenerated(tmp_path: Path) -> None:
    pki = make_dev_pki(tmp_path / "pki")
    pki.server_key.write_text("garbage")
    make_dev_pki(tmp_path / "pki")
    server_context(pki.server_cert, pki.server_key)  # loads again: key matches cert


def test_ca_near_expiry_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devca, "CA_DAYS", 10)
    pki = make_dev_pki(tmp_path / "pki")
    old_ca = pki.ca_cert.read_bytes()
    monkeypatch.setattr(devca, "CA_DAYS", 3650)
    make_dev_pki(tmp_path / "pki")
    assert pki.ca_cert.read_bytes() != old_ca
    load(pki.server_cert).verify_directly_issued_by(load(pki.ca_cert))


def test_client_certificate_issued_by_dev_ca(pki: DevPki) -> None:
    cert_path, key_path = pki.issue_client_cert("alice")
    cert = load(cert_path)
    cert.verify_directly_issued_by(load(pki.ca_cert))
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    with pytest.raises(ValueError):
        pki.issue_client_cert("../evil")


def test_reload_outcomes_reach_the_notify_hook(tmp_path: Path) -> None:
    """Certificate changes are audited: the hook hears every accepted and refused reload."""
    pki = make_dev_pki(tmp_path / "pki")
    heard: list[tuple[str, dict[str, object]]] = []
    provider = ReloadingContext(pki.server_cert, pki.server_key,
                                notify=lambda event, fields: heard.append((event, dict(fields))))
    serial = provider.status()["serial"]
    pki.server_cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nbroken\n")
    assert not provider.reload("test")  # an explicit reload refuses at once
    assert heard[-1][0] == "tls.reload_refused"
    assert heard[-1][1]["reason"] == "unparsable" and heard[-1][1]["serial"] == serial
    other = make_dev_pki(tmp_path / "other")
    pki.server_cert.write_bytes(other.server_cert.read_bytes())
    pki.server_key.write_bytes(other.server_key.read_bytes())
    assert provider.reload("test")
    event, fields = heard[-1]
    assert event == "tls.reloaded" and fields["previous_serial"] == serial
    assert fields["serial"] == provider.status()["serial"] != serial


def test_a_private_key_others_can_read_is_served_and_said_once_per_mode(
        pki: DevPki, caplog: pytest.LogCaptureFixture) -> None:
    """Refused secret files elsewhere are 0600 files; a TLS key readable by others is served
    (the service stays up) but warned about at start-up and again only when its mode changes."""
    key = Path(pki.server_key)
    key.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="ferrohsm.tls"):
        reloading = ReloadingContext(pki.server_cert, pki.server_key)
        reloading.reload()
        assert [r.getMessage() for r in caplog.records if "can be read" in r.getMessage()] == [
            f"the TLS private key {key} can be read by other users (mode 644): make it 0600 "
            "(chmod 600)"]
        key.chmod(0o640)
        reloading.reload()
        key.chmod(0o600)
        reloading.reload()
    warned = [r for r in caplog.records if "can be read" in r.getMessage()]
    assert len(warned) == 2 and "mode 640" in warned[1].getMessage()


def test_the_certificate_summary_names_its_addresses_too(pki: DevPki) -> None:
    """/healthz's tls object: a certificate for 127.0.0.1 named no address (DNS names only)."""
    from ferrohsm.tls.status import certificate_summary
    summary = certificate_summary(load(Path(pki.server_cert)))
    assert "localhost" in summary["dns_names"]  # type: ignore[operator]
    assert {"127.0.0.1", "::1"} <= set(summary["ip_addresses"])  # type: ignore[call-overload]
