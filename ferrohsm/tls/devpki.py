"""A development PKI for ``ferrohsm quickstart`` and the tests: one CA, one server certificate,
client certificates on demand. Not for production (the CA key sits next to the certificates).

Files (PEM) in ``directory`` (mode 0700): ``ca.pem``, ``ca-key.pem``, ``server.pem``,
``server-key.pem``, and ``client-<name>.pem`` / ``client-<name>-key.pem``. Key files are created
with mode 0600 by ``os.open`` (never world-readable, not even between create and chmod) and moved
into place atomically, so a crash never leaves a half-written key.

Restarting quickstart on the same directory reuses what is there when it is still valid (CA and
server key match their certificates, the server certificate was issued by the CA, covers the
requested hosts and is not within 30 days of expiry): clients keep trusting the same ``ca.pem``.
A server certificate that fails those checks is reissued under the same CA when the CA is fine.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..smallfile import atomic_write

CA_DAYS = 3650
SERVER_DAYS = 365
CLIENT_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)
DEFAULT_HOSTS = ("127.0.0.1", "localhost", "::1")
_CLIENT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class DevPki:
    """Paths of a development PKI; ``issue_client_cert`` signs client certificates with its CA."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    def issue_client_cert(self, name: str, days: int = CLIENT_DAYS) -> tuple[Path, Path]:
        """A clientAuth certificate with CN ``name``; returns (cert_path, key_path)."""
        if not _CLIENT_NAME_RE.fullmatch(name):
            raise ValueError("client name: 1-64 of letters, digits, '.', '_' or '-'")
        ca_cert, ca_key = _load_pair(self.ca_cert, self.ca_key)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _leaf(ca_cert, ca_key, key, name, [], ExtendedKeyUsageOID.CLIENT_AUTH, days)
        cert_path = self.directory / f"client-{name}.pem"
        key_path = self.directory / f"client-{name}-key.pem"
        _write_key(key_path, key)
        _write_cert(cert_path, cert)
        return cert_path, key_path


def make_dev_pki(directory: str | os.PathLike[str],
                 hosts: Iterable[str] = DEFAULT_HOSTS) -> DevPki:
    """Create (or reuse) the dev CA and server certificate in ``directory``."""
    root = Path(directory)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    pki = DevPki(root, root / "ca.pem", root / "ca-key.pem", root / "server.pem",
                 root / "server-key.pem")
    host_list = list(dict.fromkeys(hosts))
    now = _now()
    ca = _usable_pair(pki.ca_cert, pki.ca_key, now)
    if ca is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key)
        _write_key(pki.ca_key, ca_key)
        _write_cert(pki.ca_cert, ca_cert)
        ca = (ca_cert, ca_key)
    if not _server_ok(pki, ca[0], host_list, now):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _leaf(ca[0], ca[1], key, host_list[0] if host_list else "localhost",
                     host_list, ExtendedKeyUsageOID.SERVER_AUTH, SERVER_DAYS)
        _write_key(pki.server_key, key)
        _write_cert(pki.server_cert, cert)
    return pki


# ------------------------------------------------------------------ certificates


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FerroHSM development"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = _now()
    name = _name(f"FerroHSM dev CA {secrets.token_hex(4)}")
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
          key: ec.EllipticCurvePrivateKey, common_name: str, hosts: list[str],
          usage: x509.ObjectIdentifier, days: int) -> x509.Certificate:
    """A server (SANs) or client end-entity certificate signed by the dev CA."""
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans(hosts)), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def sans(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """Each host as the subjectAltName it is: an IP address, else a DNS name."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


# ------------------------------------------------------------------ reuse checks


def _load_pair(cert_path: Path, key_path: Path
               ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("not an EC key")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise ValueError("key does not match certificate")
    return cert, key


def _usable_pair(cert_path: Path, key_path: Path, now: dt.datetime
                 ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The existing CA when present, matching and not near expiry; None means regenerate."""
    try:
        cert, key = _load_pair(cert_path, key_path)
    except (OSError, ValueError, TypeError):
        return None
    return (cert, key) if cert.not_valid_after_utc - now > RENEW_BEFORE else None


def _server_ok(pki: DevPki, ca_cert: x509.Certificate, hosts: list[str],
               now: dt.datetime) -> bool:
    try:
        cert, _ = _load_pair(pki.server_cert, pki.server_key)
        cert.verify_directly_issued_by(ca_cert)
        held = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False  # reissue rather than fail start-up
    wanted = set(sans(hosts))
    return wanted <= set(held) and cert.not_valid_after_utc - now > RENEW_BEFORE


# ------------------------------------------------------------------ files


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    atomic_write(path, pem, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    atomic_write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


