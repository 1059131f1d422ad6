"""A certificate chain and its private key read from PEM files, checked before they are served.

A pair is refused (``PairRefused``, its ``kind`` one of ``KINDS``) when a file cannot be read or
parsed, the key does not belong to the first certificate, that certificate is expired or not yet
valid (a refused pair is looked at again at every poll, so a renewal dated a little ahead goes
in service when clients accept it), or (on a reload) it no longer covers a name the certificate
in service covers. No setting
names the server's hostname, so the names in service are the reference: a renewal keeps them (or
adds some), a rename is a restart. Messages name files and reasons, never file content.

A leaf must also verify against the issuer at hand (the chain file's, else the served chain's):
clients check that signature, so a leaf that names an intermediate it was not signed by fails
every handshake (``untrusted_issuer``). A leaf issued by a CA is not replaced by a self-signed
one for the same reason; a self-signed pair at start-up is the operator's choice and stays.
When no chain carries the issuer its signature cannot be checked here and the leaf is taken.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from ..crypto.certs import key_matches_certificate
from ..smallfile import MIB, read_at_most

PEM_LIMIT = 16 * MIB  # a certificate chain, a key or a CA bundle: never near this

StrPath = str | os.PathLike[str]
KINDS = ("unreadable", "unparsable", "key_mismatch", "expired", "not_yet_valid", "names",
         "incomplete_chain", "untrusted_issuer")


class PairRefused(Exception):
    """A PEM pair that must not be served; ``kind`` says why, ``message`` in words."""

    def __init__(self, kind: str, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.message, self.setting = kind, message, setting


@dataclass(frozen=True)
class Pair:
    """A checked pair: the chain (leaf first), the raw bytes it came from and their digest."""

    chain: tuple[x509.Certificate, ...]
    cert_pem: bytes
    key_pem: bytes
    digest: str

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def issuer(self) -> x509.Certificate | None:
        """The leaf's issuer when the chain file carries it (needed for OCSP)."""
        for cert in self.chain[1:]:
            if cert.subject == self.leaf.issuer:
                return cert
        return None


def read_pair(cert_file: StrPath, key_file: StrPath, now: dt.datetime,
              must_cover: x509.Certificate | None = None,
              served_issuer: x509.Certificate | None = None) -> Pair:
    """Read both files once and check them; PairRefused says what is wrong. ``served_issuer``:
    the intermediate the chain in service carries for its leaf, if any."""
    cert_pem, key_pem = _read(cert_file), _read(key_file)
    try:
        chain = tuple(x509.load_pem_x509_certificates(cert_pem))
    except ValueError:
        raise PairRefused("unparsable", f"{cert_file}: not a PEM certificate chain") from None
    _whole(cert_file, cert_pem, chain)
    leaf = chain[0]
    try:
        matches = key_matches_certificate(key_pem, leaf)
    except ValueError as exc:
        raise PairRefused("unparsable", f"{key_file}: {exc}") from None
    if not matches:
        raise PairRefused("key_mismatch", f"{key_file} is not the key of {cert_file}")
    if now < leaf.not_valid_before_utc:  # no leeway: served early, clients refuse it, and a
        # refused pair is looked at again at every poll, so it goes in service on time
        raise PairRefused("not_yet_valid", f"{cert_file} is not valid before "
                          f"{leaf.not_valid_before_utc.isoformat()}")
    if now > leaf.not_valid_after_utc:
        raise PairRefused("expired", f"{cert_file} expired at "
                          f"{leaf.not_valid_after_utc.isoformat()}")
    if must_cover is not None:
        lost = sorted(name for name in names_of(must_cover) if not covers(leaf, name))
        if lost:
            raise PairRefused("names", f"{cert_file} no longer covers {', '.join(lost)} "
                              "(a change of names needs a restart)")
    pair = Pair(chain, cert_pem, key_pem, hashlib.sha256(cert_pem + b"\0" + key_pem).hexdigest())
    if served_issuer is not None and leaf.issuer == served_issuer.subject and pair.issuer is None:
        raise PairRefused("incomplete_chain", f"{cert_file} no longer carries the intermediate "
                          "certificate that issued its certificate, which the chain in service "
                          "carries (a chain file still being written, or one cut short)")
    _check_issuer(cert_file, pair, must_cover, served_issuer)
    return pair


def _check_issuer(cert_file: StrPath, pair: Pair, served: x509.Certificate | None,
                  served_issuer: x509.Certificate | None) -> None:
    """The leaf's signature, checked against whichever issuer is at hand: name matching alone
    let a leaf signed by another key (or a self-signed one) go into service."""
    leaf = pair.leaf
    if _self_signed(leaf):
        if served is not None and not _self_signed(served):
            by = served.issuer.rfc4514_string()
            raise PairRefused("untrusted_issuer", f"{cert_file} is self-signed but the "
                              f"certificate in service was issued by {by} (no client that "
                              "trusts that CA could verify it)")
        return
    candidates = [cert for cert in pair.chain[1:] if cert.subject == leaf.issuer]
    if not candidates and served_issuer is not None and served_issuer.subject == leaf.issuer:
        candidates = [served_issuer]
    if candidates and not any(_signed_by(leaf, cert) for cert in candidates):
        raise PairRefused("untrusted_issuer", f"{cert_file}: its certificate names "
                          f"{leaf.issuer.rfc4514_string()} as issuer but that certificate's key "
                          "did not sign it")


def _signed_by(leaf: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True unless the signature is wrong; an algorithm cryptography cannot check is no
    evidence against the leaf (clients may well check it)."""
    try:
        leaf.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return False
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return True
    return True


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and _signed_by(cert, cert)


def _whole(cert_file: StrPath, cert_pem: bytes, chain: tuple[x509.Certificate, ...]) -> None:
    """Every PEM block complete: the loader skips a block cut short, so a chain file caught
    while being written (its intermediate half there) would otherwise be served without it."""
    if cert_pem.count(b"-----BEGIN ") != cert_pem.count(b"-----END ") \
            or cert_pem.count(b"-----BEGIN CERTIFICATE-----") != len(chain):
        raise PairRefused("incomplete_chain", f"{cert_file}: a PEM block is cut short (a file "
                          "still being written?)")


def _read(path: StrPath) -> bytes:
    try:
        return read_at_most(path, PEM_LIMIT, regular=True)  # a FIFO would hang start or reload
    except OSError as exc:
        raise PairRefused("unreadable", f"cannot read {path}: "
                          f"{exc.strerror or type(exc).__name__}") from None


def names_of(cert: x509.Certificate) -> set[str]:
    """The DNS names and IP addresses of the subjectAltName (lowercase, as text)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    dns = {name.lower() for name in sans.get_values_for_type(x509.DNSName)}
    return dns | {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}


def covers(cert: x509.Certificate, name: str) -> bool:
    """Whether ``cert`` is valid for ``name`` (a wildcard covers one left-most label)."""
    own = names_of(cert)
    if name in own:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return False
    _, dot, rest = name.partition(".")
    return bool(dot) and not name.startswith("*.") and f"*.{rest}" in own
