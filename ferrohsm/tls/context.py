"""TLS contexts: TLS 1.3 only, optional client certificates, and hot reload of the server cert.

TLS 1.3 only because every client we support speaks it, and it removes the whole TLS 1.2 cipher
and renegotiation configuration surface (no CBC, no RSA key exchange, no compression).

``ReloadingContext`` lets an operator (or an ACME client) replace the certificate files without a
restart: the server asks it for a context per connection, it re-stats the files at most once a
second, and a half-written or broken PEM never replaces a working context.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..domain.errors import ConfigError

StrPath = str | os.PathLike[str]
log = logging.getLogger("ferrohsm.tls")
CHECK_INTERVAL = 1.0


def _tls13_only(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def server_context(
    cert_file: StrPath,
    key_file: StrPath,
    client_ca: StrPath | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A TLS 1.3 server context; with ``client_ca`` clients may (or must) present a certificate.

    Raises ConfigError naming the file when a certificate, key or CA cannot be loaded.
    """
    if require_client_cert and client_ca is None:
        raise ConfigError("tls.require_client_cert needs tls.client_ca")
    context = _tls13_only(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    # A client that closes TCP without close_notify while its request runs must still get the
    # response (the loop reads on, and OpenSSL 3 would otherwise fail the whole connection on
    # that EOF). Bodies are framed by Content-Length, so a truncation is still detected.
    context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    try:
        context.load_cert_chain(os.fspath(cert_file), os.fspath(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls.cert/tls.key: cannot load {cert_file} / {key_file}: "
                          f"{_reason(exc)}") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=os.fspath(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tls.client_ca: cannot load {client_ca}: {_reason(exc)}") from None
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(
    ca_file: StrPath | None,
    cert_file: StrPath | None = None,
    key_file: StrPath | None = None,
) -> ssl.SSLContext:
    """A TLS 1.3 client context verifying the server (hostname included) against ``ca_file``
    (None = the system trust store), optionally presenting a client certificate."""
    context = ssl.create_default_context(
        cafile=os.fspath(ca_file) if ca_file is not None else None
    )
    _tls13_only(context)
    context.check_hostname = True
    if cert_file is not None:
        context.load_cert_chain(os.fspath(cert_file),
                                os.fspath(key_file) if key_file is not None else None)
    return context


def cert_fingerprint(der: bytes) -> str:
    """RFC 8705 ``x5t#S256``: unpadded base64url of the SHA-256 of the DER certificate."""
    digest = hashlib.sha256(der).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _reason(exc: BaseException) -> str:
    """Error text without anything from inside the files (never echo key material)."""
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


Signature = tuple[tuple[int, int, int] | None, ...]


class ReloadingContext:
    """Callable returning the current server context, rebuilt when its files change.

    Change detection is (mtime_ns, size, inode) per file, checked at most every ``interval``
    seconds, so the per-connection cost is one clock read. A rebuild that fails (half-written
    PEM, key not matching the cert) keeps the old context and logs one warning per change.
    """

    def __init__(
        self,
        cert_file: StrPath,
        key_file: StrPath,
        client_ca: StrPath | None = None,
        require_client_cert: bool = False,
        *,
        interval: float = CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._files = [Path(cert_file), Path(key_file)]
        if client_ca is not None:
            self._files.append(Path(client_ca))
        self._build: Callable[[], ssl.SSLContext] = lambda: server_context(
            cert_file, key_file, client_ca, require_client_cert)
        self._interval, self._clock = interval, clock
        self._lock = threading.Lock()
        self._signature = self._stat()
        self._context = self._build()  # a broken file at start-up is a ConfigError
        self._seen = self._signature
        self._checked = clock()
        # (outcome, message) for every reload attempt; the composition root points it at the
        # audit log, since a certificate change is a configuration change auditors must see.
        self.on_reload: Callable[[str, str], None] | None = None

    @property
    def context(self) -> ssl.SSLContext:
        return self._context

    def __call__(self) -> ssl.SSLContext:
        now = self._clock()
        if now - self._checked >= self._interval and self._lock.acquire(blocking=False):
            try:
                self._checked = now
                self._maybe_reload()
            finally:
                self._lock.release()
        return self._context

    def _maybe_reload(self) -> None:
        signature = self._stat()
        if signature == self._seen:
            return
        self._seen = signature  # warn once per change, not once per second
        try:
            context = self._build()
        except ConfigError as exc:
            log.warning("TLS files changed but cannot be loaded; keeping the previous "
                        "certificate: %s", exc.message)
            self._notify("error", f"TLS files changed but could not be loaded: {exc.message}")
            return
        self._context, self._signature = context, signature
        log.info("TLS certificate reloaded from %s", self._files[0])
        self._notify("success", f"TLS certificate reloaded from {self._files[0]}")

    def _notify(self, outcome: str, message: str) -> None:
        if self.on_reload is None:
            return
        try:
            self.on_reload(outcome, message)
        except Exception:  # the new context stands; a failed record is logged by the sink
            log.error("TLS reload could not be recorded in the audit log")

    def _stat(self) -> Signature:
        result: list[tuple[int, int, int] | None] = []
        for path in self._files:
            try:
                st = path.stat()
            except OSError:
                result.append(None)
            else:
                result.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(result)
