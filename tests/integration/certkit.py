"""A test CA for the TLS tests: leaves with chosen validity, names and AIA OCSP URL, a delegated
OCSP signer, ``openssl ocsp`` as the real responder over an index file, ``openssl s_client``."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now
HOSTS = ("127.0.0.1", "localhost")


def now() -> dt.datetime:
    return NOW(dt.UTC)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class Leaf:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain_pem: bytes  # leaf then issuer

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def serial(self) -> str:
        return format(self.cert.serial_number, "x")


def _sans(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


class TestCA:
    """A self-signed EC CA whose files sit in ``directory`` (ca.pem, ca-key.pem)."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "FerroHSM TLS test CA") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(now() - dt.timedelta(days=1))
                     .not_valid_after(now() + dt.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                         self.key.public_key()), False)
                     .sign(self.key, hashes.SHA256()))
        self.cert_file, self.key_file = directory / "ca.pem", directory / "ca-key.pem"
        self.cert_file.write_bytes(pem(self.cert))
        self.key_file.write_bytes(key_pem(self.key))
        os.chmod(self.key_file, 0o600)

    def _builder(self, cn: str, key: ec.EllipticCurvePrivateKey, not_before: dt.datetime,
                 not_after: dt.datetime, self_signed: bool = False) -> x509.CertificateBuilder:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        issuer_key = key if self_signed else self.key
        return (x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(subject if self_signed else self.cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(not_before).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    issuer_key.public_key()), False))

    def leaf(self, names: Sequence[str] = HOSTS, *, ocsp_url: str | None = None,
             not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
             usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
             signer: ec.EllipticCurvePrivateKey | None = None,
             self_signed: bool = False) -> Leaf:
        """``signer``: sign with that key instead of the CA's (a forgery naming this CA);
        ``self_signed``: the leaf is its own issuer and the chain is the leaf alone."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(names[0] if names else "leaf", key,
                                not_before or now() - dt.timedelta(hours=1),
                                not_after or now() + dt.timedelta(days=7), self_signed)
        builder = builder.add_extension(x509.SubjectAlternativeName(_sans(names)), False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), False)
        if ocsp_url is not None:
            builder = builder.add_extension(x509.AuthorityInformationAccess([
                x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                       x509.UniformResourceIdentifier(ocsp_url))]), False)
        if self_signed:
            cert = builder.sign(key, hashes.SHA256())
            return Leaf(cert, key, pem(cert))
        cert = builder.sign(signer or self.key, hashes.SHA256())
        return Leaf(cert, key, pem(cert) + pem(self.cert))

    def responder(self, ocsp_signing: bool = True) -> Leaf:
        """A delegated OCSP responder certificate (id-kp-OCSPSigning unless told otherwise)."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.OCSP_SIGNING if ocsp_signing else ExtendedKeyUsageOID.SERVER_AUTH
        cert = (self._builder("OCSP responder", key, now() - dt.timedelta(hours=1),
                              now() + dt.timedelta(days=7))
                .add_extension(x509.ExtendedKeyUsage([usage]), False)
                .sign(self.key, hashes.SHA256()))
        return Leaf(cert, key, pem(cert))


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install(leaf: Leaf, cert_file: Path, key_file: Path) -> None:
    """Cert then key, each atomically (the order a careless operator uses)."""
    write_atomic(cert_file, leaf.chain_pem, 0o644)
    write_atomic(key_file, leaf.key_pem)


def served_certificate(port: int, host: str = "127.0.0.1") -> x509.Certificate:
    """The certificate a new handshake gets (no verification: we only look at it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=10) as raw, \
            context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(predicate: object, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class OcspResponder:
    """``openssl ocsp`` answering for ``ca`` on 127.0.0.1:``port`` from an index file, signing
    with a delegated responder certificate, nextUpdate one minute ahead (``-nmin 1``)."""

    def __init__(self, ca: TestCA, directory: Path, port: int | None = None) -> None:
        self.ca, self.directory = ca, directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.index = directory / "index.txt"
        self.log = directory / "responder.log"
        self.index.write_text("")
        (directory / "index.txt.attr").write_text("unique_subject = no\n")  # reissued names
        signer = ca.responder()
        self.signer_file, self.signer_key = directory / "rsigner.pem", directory / "rkey.pem"
        self.signer_file.write_bytes(signer.chain_pem)
        write_atomic(self.signer_key, signer.key_pem)
        self.lines: dict[int, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, cert: x509.Certificate, revoked: bool = False) -> None:
        serial = format(cert.serial_number, "X")
        serial = serial if len(serial) % 2 == 0 else "0" + serial
        expiry = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        dn = "/CN=" + str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        revoked_at = now().strftime("%y%m%d%H%M%SZ") if revoked else ""
        self.lines[cert.serial_number] = "\t".join(
            ["R" if revoked else "V", expiry, revoked_at, serial, "unknown", dn])
        self.index.write_text("".join(line + "\n" for line in self.lines.values()))

    def start(self) -> None:
        self.log.write_bytes(b"")
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            ["openssl", "ocsp", "-index", str(self.index), "-port", str(self.port),
             "-rsigner", str(self.signer_file), "-rkey", str(self.signer_key),
             "-CA", str(self.ca.cert_file), "-nmin", "1", "-ignore_err"],
            stdout=log, stderr=log)
        log.close()
        wait_for(self._listening, 10, "openssl ocsp to listen")

    def _listening(self) -> bool:
        """From its log: a probing connection would hold the one-at-a-time responder up."""
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
        return b"waiting for OCSP client connections" in self.log.read_bytes()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def s_client_status(port: int, ca_file: Path) -> str:
    """``openssl s_client -status`` against 127.0.0.1:``port``: its whole output."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-status",
                          "-CAfile", str(ca_file), "-tls1_3"],
                         input=b"", capture_output=True, timeout=20, check=False)
    return out.stdout.decode(errors="replace")
