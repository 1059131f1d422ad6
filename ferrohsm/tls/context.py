"""TLS contexts: TLS 1.3 only, optional client certificates, and hot reload of the server cert.

TLS 1.3 only because every client we support speaks it, and it removes the whole TLS 1.2 cipher
and renegotiation configuration surface (no CBC, no RSA key exchange, no compression).

``ReloadingContext`` lets an operator replace the certificate files without a restart: the server
asks it for a context per connection, a thread re-stats the files every ``[tls].reload_seconds``
(SIGHUP: at once), and a half-written, mismatched, expired or otherwise broken pair never
replaces a working context (tls/pair.py says what is checked).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import os
import ssl
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from ..domain.errors import ConfigError
from .pair import Pair, PairRefused, read_pair
from .stapler import OcspStapler, Staple
from .status import Notify, certificate_summary, rfc3339
from .trust import ClientTrust, file_stats

if TYPE_CHECKING:
    from .pyossl import StaplingContext

StrPath = str | os.PathLike[str]
log = logging.getLogger("ferrohsm.tls")
ServerContext: TypeAlias = "ssl.SSLContext | StaplingContext"


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
    client_crl: StrPath | None = None,
) -> ssl.SSLContext:
    """A TLS 1.3 server context; with ``client_ca`` clients may (or must) present a certificate
    (checked against ``client_crl`` when given: tls/trust.py).

    Raises ConfigError naming the file when a certificate, key or CA cannot be loaded.
    """
    if require_client_cert and client_ca is None:
        raise ConfigError("tls.require_client_cert needs tls.client_ca")
    if client_crl and client_ca is None:
        raise ConfigError("tls.client_crl needs tls.client_ca")
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
        ClientTrust(client_ca, client_crl).apply(context)
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


def warn_if_exposed(key_file: Path, warned: int | None) -> int | None:
    """A private key file others may read is served (refusing it would take the service down
    over a mode the operator can fix at leisure) but said once per mode, at start-up and on
    reload: the key authenticates this server to every client. The mode warned about."""
    try:
        mode = stat.S_IMODE(key_file.stat().st_mode)
    except OSError:
        return warned
    if mode & 0o077 and mode != warned:
        log.warning("the TLS private key %s can be read by other users (mode %o): make it "
                    "0600 (chmod 600)", key_file, mode)
        return mode
    return warned if mode & 0o077 else None


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
RELOAD_SECONDS = 30.0


class ReloadingContext:
    """The TLS provider of PEM mode: a callable returning the context for a new connection.

    ``__call__`` returns an attribute and nothing more (the per-connection cost); a thread
    (``start``) polls the files' (mtime_ns, size, inode) every ``interval`` seconds (and reads
    them at every poll while the last attempt stands refused) and ``reload`` (SIGHUP) looks
    at once. A changed pair is read once, checked (tls/pair.py) and
    only then built and swapped in: handshakes from then on use it, established connections
    keep the one they began with. A pair that fails its checks leaves the old one in service,
    logs a warning and emits ``tls.reload_refused``; a good one emits ``tls.reloaded``.

    Cert and key are rarely replaced at the same instant: a poll that finds a broken pair
    waits for the next poll before refusing it, and refuses only if the files did not change
    in between (SIGHUP refuses at once: the operator says the files are ready). A half-written
    pair is thus never served and a cert-then-key replacement is not reported as a failure.

    With a ``stapler`` (``[tls] ocsp_staple``) contexts are pyOpenSSL ones that staple the
    stapler's response (tls/pyossl.py); without, plain ``ssl.SSLContext`` as always.
    """

    def __init__(
        self,
        cert_file: StrPath,
        key_file: StrPath,
        client_ca: StrPath | None = None,
        require_client_cert: bool = False,
        *,
        client_crl: StrPath | None = None,
        interval: float = RELOAD_SECONDS,
        notify: Notify | None = None,
        stapler: OcspStapler | None = None,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._cert_file, self._key_file = Path(cert_file), Path(key_file)
        self._client_trust = ClientTrust(client_ca, client_crl)
        self._files = [self._cert_file, self._key_file, *self._client_trust.files]
        self._require_client_cert = require_client_cert
        self.interval, self.notify, self._stapler, self._now = interval, notify, stapler, now
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen = self._stat()
        self._pending: Signature | None = None
        self._refused: str | None = None  # kind of the last refused pair, until one is served
        self._key_mode_warned: int | None = None
        try:
            pair, build = self._load(None)
        except PairRefused as exc:  # a broken pair at start-up is a configuration error
            raise ConfigError(f"tls.cert/tls.key: {exc.message}") from None
        try:
            self._trusted = self._trust()
        except PairRefused as exc:
            raise ConfigError(f"{exc.setting or 'tls.client_ca'}: {exc.message}") from None
        self._pair = pair
        self._context = build()
        self._client_trust.in_service(self._now())

    def __call__(self) -> ServerContext:
        return self._context

    @property
    def context(self) -> ServerContext:
        return self._context

    # ---- reloading ---------------------------------------------------------------------------

    def check(self) -> bool:
        """One poll: reload when the files changed, or while the last attempt stands refused
        (what refused it may pass by without touching the files: a notBefore reached, a key
        made readable by chown); True when a new pair went into service."""
        signature = self._stat()
        if signature == self._seen and self._refused is None:
            return False
        with self._lock:
            return self._attempt(signature, wait_if_broken=signature != self._seen)

    def reload(self, reason: str = "SIGHUP") -> bool:
        """Look at the files now (SIGHUP); True when a new pair went into service."""
        log.info("TLS reload requested (%s)", reason)
        with self._lock:
            return self._attempt(self._stat(), wait_if_broken=False, again_quiet=False)

    def _attempt(self, signature: Signature, wait_if_broken: bool,
                 again_quiet: bool = True) -> bool:
        """``again_quiet``: a refusal for the reason already reported (same files, polled
        again) is not logged or recorded again; only SIGHUP, which the operator asked for,
        always says it."""
        try:
            pair, build = self._load(self._pair)
            trusted = self._trust()
            new_pair = pair.digest != self._pair.digest
            context = build() if new_pair or trusted != self._trusted else None
        except PairRefused as exc:
            if wait_if_broken and self._pending != signature:
                self._pending = signature  # maybe the other half is on its way: next poll
                log.debug("TLS files changed but do not form a usable pair yet: %s", exc.message)
                return False
            same = signature == self._seen and exc.kind == self._refused
            self._seen, self._pending = signature, None
            if same and again_quiet:
                log.debug("TLS files still refused (%s): %s", exc.kind, exc.message)
            else:
                self._refuse(exc)
            return False
        self._seen, self._pending = signature, None
        if context is None:  # touched, same content: the files are what is served again
            self._refused = None
            return False
        old = self._pair.leaf
        self._pair, self._context, self._refused = pair, context, None
        if trusted != self._trusted:
            self._trusted = trusted
            self._client_trust.in_service(self._now())
            self._trust_changed()
        if not new_pair:
            return True
        log.info("TLS certificate reloaded from %s: serial %x -> %x (expires %s)",
                 self._cert_file, old.serial_number, pair.leaf.serial_number,
                 rfc3339(pair.leaf.not_valid_after_utc))
        self._emit("tls.reloaded", {"previous_serial": format(old.serial_number, "x"),
                                    **certificate_summary(pair.leaf),
                                    "file": str(self._cert_file)})
        return True

    def _trust(self) -> str | None:
        """The digest of the client CA and CRL files (tls/trust.py), checked; put in service
        with the pair."""
        digest = self._client_trust.read()
        self._client_trust.check()
        return digest

    def _trust_changed(self) -> None:
        log.info("TLS client CA file %s reloaded: new handshakes trust its certificates",
                 self._client_trust.client_ca)
        self._emit("tls.client_ca_reloaded", {"file": str(self._client_trust.client_ca),
                                              "sha256": str(self._trusted)})

    def _refuse(self, exc: PairRefused) -> None:
        self._refused = exc.kind
        serial = format(self._pair.leaf.serial_number, "x")
        log.warning("TLS files changed but were refused (%s); keeping certificate serial %s: %s",
                    exc.kind, serial, exc.message)
        self._emit("tls.reload_refused", {"reason": exc.kind, "message": exc.message,
                                          "serial": serial})

    def _load(self, served: Pair | None) -> tuple[Pair, Callable[[], ServerContext]]:
        """The checked pair (held against the one in service) and how to build its context
        (built only if it is new)."""
        pair = read_pair(self._cert_file, self._key_file, self._now(),
                         served.leaf if served else None, served.issuer if served else None)
        self._key_mode_warned = warn_if_exposed(self._key_file, self._key_mode_warned)
        if self._stapler is not None:
            return pair, lambda: self._stapling(pair)
        return pair, lambda: self._plain(pair)

    def _plain(self, pair: Pair) -> ssl.SSLContext:
        try:
            trust = self._client_trust
            context = server_context(self._cert_file, self._key_file, trust.client_ca,
                                     self._require_client_cert, trust.client_crl)
        except ConfigError as exc:
            raise PairRefused("unparsable", exc.message) from None
        # ssl loads from the paths: make sure it loaded the very bytes that were checked
        if read_pair(self._cert_file, self._key_file, self._now()).digest != pair.digest:
            raise PairRefused("unreadable", "the files changed while they were being loaded")
        return context

    def _stapling(self, pair: Pair) -> ServerContext:
        from .pyossl import stapling_context  # pyOpenSSL only when stapling is on
        assert self._stapler is not None  # noqa: S101  narrows a type for mypy
        staple = Staple()
        try:
            trust = self._client_trust
            context = stapling_context(pair, staple, trust.client_ca, self._require_client_cert,
                                       trust.client_crl)
        except ValueError as exc:
            raise PairRefused("unparsable", str(exc)) from None
        self._stapler.track(pair.leaf, pair.issuer, staple)  # only once it will be served
        return context

    def _emit(self, event: str, fields: Mapping[str, object]) -> None:
        if self.notify is None:
            return
        try:
            self.notify(event, fields)
        except Exception:  # the pair stands; a failed record is logged by the sink
            log.error("TLS event %s could not be recorded in the audit log", event)

    def _stat(self) -> Signature:
        return file_stats(self._files)

    # ---- running -----------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """Public facts of the served certificate and its OCSP status (for /healthz, metrics)."""
        report: dict[str, object] = {"mode": "pem", **certificate_summary(self._pair.leaf)}
        report.update(self._stapler.status() if self._stapler is not None else {"ocsp": "off"})
        report.update(self._client_trust.status(self._now()))
        if self._refused is not None:
            report["reload_refused"] = self._refused
        return report

    def start(self) -> None:
        """Poll the files every ``interval`` seconds; fetch OCSP responses when stapling."""
        if self._stapler is not None:
            self._stapler.notify = self._stapler.notify or self.notify
            self._stapler.start()
        if self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="ferrohsm-tls-reload",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._stapler is not None:
            self._stapler.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # a bug must not end reloading for good
                log.exception("TLS reload check failed")
