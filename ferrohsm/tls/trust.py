"""What client certificates new handshakes accept: ``[tls] client_ca``, watched for changes.

Both providers (PEM files, ACME) serve mutual TLS from the same bundle, and an operator who
takes a CA out of it expects that CA to stop being trusted without a restart, whichever mode
serves the server certificate. ``ClientTrust`` reads and checks the files; ``TrustWatch`` is
the reload loop of the ACME provider (the PEM provider reloads trust with its pair, in one
step). A bundle that cannot be read or parsed leaves the trust in service as it is, with the
same warning, ``tls.reload_refused`` record and ``reload_refused`` status as a refused pair.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import ssl
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from cryptography import x509

from ..domain.errors import ConfigError
from ..smallfile import read_at_most
from .pair import PEM_LIMIT, PairRefused

log = logging.getLogger("ferrohsm.tls")


class ClientTrust:
    """The client CA bundle of mutual TLS (None: no mutual TLS) and its CRLs (None: none).

    With ``client_crl`` OpenSSL checks each client certificate against its issuer's CRL
    (``VERIFY_CRL_CHECK_LEAF``) and fails closed: a client whose issuer has no CRL in the file,
    or whose issuer's CRL is past its nextUpdate, is refused, since stale revocation data is
    no evidence that a certificate is still good. So a CRL is refused when it is malformed or
    not signed by a CA of the bundle, and a CA without a CRL, or a CRL past its nextUpdate, is
    warned about when loaded and counted in the status (``client_crl_expired``).
    """

    def __init__(self, client_ca: str | os.PathLike[str] | None,
                 client_crl: str | os.PathLike[str] | None = None) -> None:
        self.client_ca = os.fspath(client_ca) if client_ca is not None else None
        self.client_crl = os.fspath(client_crl) if client_crl else None
        self._checked: list[dt.datetime | None] = []
        self.next_updates: list[dt.datetime | None] = []  # of the CRLs in service

    @property
    def files(self) -> list[Path]:
        return [Path(p) for p in (self.client_ca, self.client_crl) if p is not None]

    def read(self) -> str | None:
        """The digest of the files (None: no mutual TLS), so that a changed bundle is put in
        service like a changed pair: a CA taken out of it must stop being trusted."""
        if self.client_ca is None:
            return None
        digest = hashlib.sha256()
        digest.update(_read(Path(self.client_ca)) + b"\0")
        if self.client_crl is not None:
            digest.update(_read(Path(self.client_crl), "tls.client_crl"))
        return digest.hexdigest()

    def check(self) -> None:
        """Load the files into a scratch context and check the CRLs: PairRefused if OpenSSL
        would not load them or a CRL is not from a CA of the bundle."""
        if self.client_ca is None:
            return
        _read(Path(self.client_ca), "tls.client_ca")  # a regular file (OpenSSL would wait on a FIFO)
        if self.client_crl is not None:
            _read(Path(self.client_crl), "tls.client_crl")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=self.client_ca)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror
            raise PairRefused("unparsable", f"{self.client_ca}: not a PEM CA bundle "
                              f"({reason or type(exc).__name__})") from None
        if self.client_crl is not None:
            self._checked = _check_crls(self.client_crl, _read(Path(self.client_ca)))

    def apply(self, context: ssl.SSLContext) -> None:
        """The CRLs into a server context that trusts the bundle (ConfigError naming the file
        if OpenSSL refuses them)."""
        if self.client_crl is None:
            return
        try:
            context.load_verify_locations(cafile=self.client_crl)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror
            raise ConfigError(f"tls.client_crl: cannot load {self.client_crl}: "
                              f"{reason or type(exc).__name__}") from None
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF

    def in_service(self, now: dt.datetime) -> None:
        """The checked files now serve: say what would refuse clients."""
        self.next_updates = self._checked
        stale = self.expired(now)
        if stale:
            log.warning("TLS client CRL file %s: %d CRL(s) past nextUpdate: every client "
                        "certificate of their CAs is refused until a fresh CRL is in the file",
                        self.client_crl, stale)

    def expired(self, now: dt.datetime) -> int:
        return sum(1 for moment in self.next_updates if moment is not None and moment < now)

    def status(self, now: dt.datetime) -> dict[str, object]:
        return {"client_crl_expired": self.expired(now)} if self.client_crl is not None else {}


def _read(path: Path, setting: str | None = None) -> bytes:
    try:
        return read_at_most(path, PEM_LIMIT, regular=True)  # a FIFO would hang start or reload
    except OSError as exc:
        raise PairRefused("unreadable", f"cannot read {path}: "
                          f"{exc.strerror or type(exc).__name__}", setting) from None


_CRL_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


def _check_crls(crl_file: str, ca_pem: bytes) -> list[dt.datetime | None]:
    """Each CRL parsed and signed by a CA of the bundle; their nextUpdates. A bundle CA with
    no CRL is warned about (its clients would all be refused), not refused: it may be a root
    that issues intermediates only."""
    setting = "tls.client_crl"
    data = _read(Path(crl_file), setting)
    blocks = _CRL_BLOCK.findall(data)
    if not blocks or data.count(b"-----BEGIN ") != len(blocks):
        raise PairRefused("unparsable", f"{crl_file}: not a file of PEM CRLs (X509 CRL blocks)",
                          setting)
    try:
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:  # e.g. OpenSSL's "TRUSTED CERTIFICATE" blocks, which it alone reads
        raise PairRefused("unparsable", "the client CA bundle must be plain PEM certificates "
                          "(BEGIN CERTIFICATE blocks) for its CRLs' issuers to be checked",
                          setting) from None
    next_updates: list[dt.datetime | None] = []
    covered: set[x509.Name] = set()
    for block in blocks:
        try:
            crl = x509.load_pem_x509_crl(block)
        except ValueError:
            raise PairRefused("unparsable", f"{crl_file}: a CRL does not parse", setting) from None
        issuers = [ca for ca in cas if ca.subject == crl.issuer]
        if not any(_signed(crl, ca) for ca in issuers):
            raise PairRefused("untrusted_issuer", f"{crl_file}: the CRL of "
                              f"{crl.issuer.rfc4514_string()} is not signed by a CA of the "
                              "client_ca bundle", setting)
        covered.add(crl.issuer)
        next_updates.append(crl.next_update_utc)
    for ca in cas:
        if ca.subject not in covered:
            log.warning("TLS client CRL file %s has no CRL of %s: client certificates it "
                        "issued are refused", crl_file, ca.subject.rfc4514_string())
    return next_updates


def _signed(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]  # CA keys are the kinds CRLs are signed with
    except (TypeError, ValueError):
        return False


Emit = Callable[[str, Mapping[str, object]], None]


def file_stats(paths: Iterable[Path]) -> tuple[tuple[int, int, int] | None, ...]:
    """(mtime, size, inode) of each file, None for one that cannot be looked at: what polls
    compare to tell a changed file (a rename in place is a new inode)."""
    found: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            found.append(None)
        else:
            found.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(found)


class TrustWatch:
    """A changed bundle is checked, then ``rebuild`` puts it in service (it raises PairRefused
    when the contexts cannot be built from it). Refusals follow the PEM provider's rules: a
    poll waits one more poll before refusing (the file may be half written), SIGHUP refuses
    at once, and while a refusal stands every poll looks again, saying nothing new unless the
    reason changes."""

    def __init__(self, trust: ClientTrust, rebuild: Callable[[], None], emit: Emit,
                 serial: Callable[[], str | None]) -> None:
        self.trust, self._rebuild, self._emit, self._serial = trust, rebuild, emit, serial
        self.digest = trust.read()  # PairRefused at start-up: the caller's configuration error
        trust.check()
        trust.in_service(dt.datetime.now(dt.UTC))
        self.refused: str | None = None
        self._pending: tuple[str | None, str] | None = None  # (digest, kind) failing lately
        self._reported: tuple[str | None, str] | None = None  # the one warned about
        self._stat = self._stats()

    def _stats(self) -> tuple[tuple[int, int, int] | None, ...]:
        """A poll reads the files only when one changed (or a refusal stands), as the PEM
        provider does: a large CRL is not hashed ten times a second for nothing."""
        return file_stats(self.trust.files)

    def check(self, loud: bool = False) -> bool:
        """One look (``loud``: SIGHUP); True when a changed bundle went into service."""
        stat = self._stats()
        if not loud and stat == self._stat and self._pending is None:
            return False
        self._stat = stat
        digest: str | None = None
        try:
            digest = self.trust.read()
            if digest == self.digest:  # unchanged, or put back as it is served
                self.refused = self._pending = self._reported = None
                return False
            self.trust.check()
            self._rebuild()
        except PairRefused as exc:
            self._refuse(exc, (digest, exc.kind), loud)
            return False
        self.digest = digest
        self.refused = self._pending = self._reported = None
        self.trust.in_service(dt.datetime.now(dt.UTC))
        log.info("TLS client CA file %s%s reloaded: new handshakes trust its certificates",
                 self.trust.client_ca,
                 f" (and CRL file {self.trust.client_crl})" if self.trust.client_crl else "")
        self._emit("tls.client_ca_reloaded", {"file": str(self.trust.client_ca),
                                              "sha256": str(digest)})
        return True

    def _refuse(self, exc: PairRefused, key: tuple[str | None, str], loud: bool) -> None:
        if not loud and self._pending != key:
            self._pending = key  # maybe still being written: the next poll decides
            log.debug("TLS client CA file changed but cannot be used yet: %s", exc.message)
            return
        if not loud and self._reported == key:
            log.debug("TLS client CA file still refused (%s): %s", exc.kind, exc.message)
            return
        self._pending = self._reported = key
        self.refused = exc.kind
        log.warning("TLS client CA file changed but was refused (%s); keeping the trust in "
                    "service: %s", exc.kind, exc.message)
        self._emit("tls.reload_refused", {"reason": exc.kind, "message": exc.message,
                                          "serial": self._serial(),
                                          "file": str(self.trust.client_ca)})
