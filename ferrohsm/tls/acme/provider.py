"""``[tls] mode = "acme"``: the SSL context of each new connection, kept fresh by one thread.

The server calls the provider once per accepted connection; that call is one attribute read.
The background thread (``start``) obtains the first certificate, renews it when due (lifetime
fraction, or the CA's ARI window), and swaps the new context in: connections already
established keep the one they were handed, new ones get the new certificate, nothing drops.

Start-up never contacts the CA to serve: a valid cached certificate is served at once. Without
one the port serves nothing but the tls-alpn-01 challenge (handshakes fail for everyone else)
until the first certificate arrives, and the log says so. Failures (CA unreachable, challenge
failed, rate limited) keep the current certificate, are retried with backoff (never sooner
than ``Retry-After``), and show in the log, ``status()`` (/healthz, metrics) and the audit log
(``tls.acme_failed``); every new certificate is ``tls.issued`` or ``tls.renewed``.

``[tls] client_ca`` is watched as in PEM mode (tls/trust.py): polled every ``reload_seconds``
and on SIGHUP (``reload``), a changed bundle in force for new handshakes, a bad one refused.

Several processes sharing the cache (``processes = N``): one leads and the others follow
(sharing.py); only the leader ever talks to the CA.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...domain.errors import ConfigError
from ..context import server_context
from ..pair import PairRefused
from ..status import Notify, certificate_summary, rfc3339
from ..trust import ClientTrust, TrustWatch
from .cache import AcmeCache, CachedCert
from .challenges import Http01Responder, TlsAlpnResponder
from .client import AcmeClient, AcmeError
from .order import ACCOUNT_GONE, Issuance, Issued, Responder, ensure_account
from .placeholder import placeholder
from .renewal import (
    ARI_DEFAULT_RECHECK,
    AriWindow,
    ari_cert_id,
    ari_renewal,
    backoff,
    fraction_renewal,
    parse_ari,
)
from .sharing import (
    FOLLOW_FIRST_SECONDS,
    FOLLOW_SECONDS,
    SYNC_SECONDS,
    Answers,
    LeaderLock,
    Publishing,
    SharedAnswers,
    mirror,
)

log = logging.getLogger("ferrohsm.tls.acme")

PRESETS = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
CHALLENGES = ("http-01", "tls-alpn-01")
ALREADY_REPLACED = "urn:ietf:params:acme:error:alreadyReplaced"
MAX_SLEEP = 3600.0  # the thread looks again at least hourly (clock jumps, ARI re-polls)
ARI_RETRY_ON_ERROR = 3600.0


def directory_url(name: str) -> str:
    """A preset's URL, or the URL itself."""
    return PRESETS.get(name, name)


@dataclass(frozen=True)
class AcmeOptions:
    """The ``[tls.acme]`` settings, resolved (cache_dir made absolute by the caller)."""

    directory: str
    domains: Sequence[str]
    email: str
    challenge: str
    http_listen: str
    ca_bundle: str
    cache_dir: str
    renew_before_fraction: float
    client_ca: str = ""
    require_client_cert: bool = False
    client_crl: str = ""
    reload_seconds: float = 30.0  # how often client_ca is looked at


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AcmeProvider:
    """Callable giving the SSLContext of each new connection; ``status()`` for /healthz."""

    def __init__(self, options: AcmeOptions, notify: Notify | None = None, *,
                 clock: Callable[[], dt.datetime] = _now, shared: bool = False) -> None:
        if options.challenge not in CHALLENGES:
            raise ConfigError(f"[tls.acme].challenge must be one of {', '.join(CHALLENGES)}")
        self.options = options
        self.notify = notify
        self.url = directory_url(options.directory)
        self._clock = clock
        self._rng = random.Random()  # noqa: S311  jitter, not a secret
        self._cache = AcmeCache(options.cache_dir)
        self._cache.account_key()  # made now, once; a corrupt one stops start-up (ConfigError)
        self._client = AcmeClient(self.url, options.ca_bundle)
        self._responder: Http01Responder | TlsAlpnResponder
        if options.challenge == "http-01":
            self._responder = Http01Responder(options.http_listen)
        else:
            self._responder = TlsAlpnResponder(self._cache)
            self._responder.on_change = self._select
        self._cert: CachedCert | None = None
        self._swap = threading.RLock()  # the ACME thread and the trust reload build contexts
        try:
            self._trust = TrustWatch(ClientTrust(options.client_ca or None,
                                                 options.client_crl or None),
                                     self._rebuild, self._emit, self._serial)
        except PairRefused as exc:
            raise ConfigError(f"{exc.setting or 'tls.client_ca'}: {exc.message}") from None
        self._watch: threading.Thread | None = None
        self._placeholder: CachedCert | None = None
        self._plain = self._serving_context(None)
        self._current = self._plain
        self._renew_at: dt.datetime | None = None
        self._ari: AriWindow | None = None
        self._ari_at: dt.datetime | None = None
        self._ari_checked: dt.datetime | None = None
        self._next_attempt: dt.datetime | None = None
        self._last_error: str | None = None
        self._last_error_at: dt.datetime | None = None
        self._failures = self._failures_total = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shared = shared  # other processes of this host serve from this cache too
        self._leader = LeaderLock(self._cache.root)
        self._following = False
        self._answers = SharedAnswers(self._cache.root)
        self._mirrored: Answers = {}
        self._stamp = self._cache.cert_stamp(self.url, options.domains)
        cached = self._cache.load_cert(self.url, options.domains, clock())
        if cached is not None:
            self._install(cached)
            log.info("ACME: serving the cached certificate (serial %x, expires %s) for %s",
                     cached.leaf.serial_number, rfc3339(cached.leaf.not_valid_after_utc),
                     ", ".join(options.domains))
        else:
            log.warning("ACME: no usable certificate yet for %s: serving a self-signed "
                        "placeholder (refused by every verifying client) and the %s "
                        "challenge until the first certificate arrives from %s",
                        ", ".join(options.domains), options.challenge, self.url)

    def __call__(self) -> ssl.SSLContext:
        return self._current

    # ------------------------------------------------------------------ contexts

    def _serving_context(self, cert: CachedCert | None) -> ssl.SSLContext:
        if cert is None:  # before the first certificate (tls/acme/placeholder.py)
            if self._placeholder is None:
                self._placeholder = placeholder(self.options.domains, self._clock())
            cert = self._placeholder
        cert_path, key_path = self._cache.write_temp_pair(cert.chain_pem, cert.key_pem)
        try:
            return server_context(cert_path, key_path, self.options.client_ca or None,
                                  self.options.require_client_cert,
                                  self.options.client_crl or None)
        finally:
            cert_path.unlink(missing_ok=True)
            key_path.unlink(missing_ok=True)

    def _install(self, cert: CachedCert) -> None:
        """Serve ``cert`` to new connections (only the ACME thread and the constructor call this;
        the server reads ``_current``, one attribute, so it sees the old context or the new)."""
        with self._swap:
            context = self._serving_context(cert)
            self._cert, self._plain = cert, context
            self._renew_at = fraction_renewal(cert.leaf, self.options.renew_before_fraction)
            self._ari = self._ari_at = self._ari_checked = None
            self._select()

    def _select(self) -> None:
        """Plain context, or (while tls-alpn-01 answers are published) a hooked copy."""
        with self._swap:
            responder = self._responder
            if isinstance(responder, TlsAlpnResponder) and responder.pending():
                hooked = self._serving_context(self._cert)
                responder.install(hooked)
                self._current = hooked
            else:
                self._current = self._plain

    # ------------------------------------------------------------------ client CA

    def check(self) -> bool:
        """One poll of ``[tls] client_ca``; True when a changed bundle went into service."""
        return self._trust.check()

    def reload(self, reason: str = "SIGHUP") -> bool:
        """Look at ``[tls] client_ca`` now (the certificate is ACME's business, not a file's)."""
        log.info("TLS client CA reload requested (%s)", reason)
        return self._trust.check(loud=True)

    def _rebuild(self) -> None:
        """The serving context again, from the changed bundle (TrustWatch checked it)."""
        with self._swap:
            try:  # the placeholder's too (no certificate yet): it serves the whole API
                self._plain = self._serving_context(self._cert)
            except ConfigError as exc:
                raise PairRefused("unparsable", exc.message) from None
            self._select()

    def _serial(self) -> str | None:
        cert = self._cert
        return format(cert.leaf.serial_number, "x") if cert is not None else None

    def _watching(self) -> None:
        while not self._stop.wait(self.options.reload_seconds):
            try:
                self.check()
            except Exception:  # a bug must not end reloading for good
                log.exception("TLS client CA reload check failed")

    # ------------------------------------------------------------------ thread

    def start(self, stop: threading.Event | None = None) -> threading.Thread:
        """Lead if no other process of this host does (then a busy http-01 port stops
        start-up, as a configuration error), and start the thread; ``stop`` ends it."""
        if stop is not None:
            self._stop = stop
        self._lead()
        self._thread = threading.Thread(target=self._run, name="ferrohsm-acme", daemon=True)
        self._thread.start()
        if self._trust.trust.client_ca is not None:
            self._watch = threading.Thread(target=self._watching, name="ferrohsm-tls-reload",
                                           daemon=True)
            self._watch.start()
        return self._thread

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for thread in (self._thread, self._watch):
            if thread is not None:
                thread.join(timeout)
        if isinstance(self._responder, Http01Responder):
            self._responder.stop()
        self._leader.release()

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.wait(delay):
            try:
                delay = self._tick()
            except Exception:  # a bug must not end renewal for good: log, back off, go on
                log.exception("ACME: unexpected error in the renewal thread")
                delay = 60.0
        if isinstance(self._responder, Http01Responder):
            self._responder.stop()

    def _tick(self) -> float:
        """One look: follow the leader, or (leading) obtain when due; the seconds until the
        next look."""
        try:
            if not self._lead():
                return self._follow()
        except (ConfigError, OSError) as exc:
            return self._failed(exc)
        now = self._clock()
        self._poll_ari(now)
        due = self._due()
        if due is not None and due > now:
            self._next_attempt = due
            return min((due - now).total_seconds(), MAX_SLEEP)
        try:
            with self._cache.locked():
                if not self._adopt_newer():
                    self._obtain()
        except (AcmeError, ConfigError, OSError, ValueError, KeyError, TypeError) as exc:
            return self._failed(exc)
        return 0.0

    # ------------------------------------------------------------------ leading, following

    def _lead(self) -> bool:
        """Whether this process leads (taking the lead when nobody holds it); a new leader
        drops what it mirrored, clears a dead leader's answers and listens for http-01."""
        if not self._leader.held:
            if not self._leader.try_acquire():
                if not self._following:
                    log.info("ACME: another process of this host leads; serving the "
                             "certificates it obtains")
                    self._following = True
                return False
            if self._following:
                log.info("ACME: this process leads now (the previous leader stopped)")
            self._following = False
            mirror(self._responder, self._mirrored, {})
            self._mirrored = {}
            if isinstance(self._responder, TlsAlpnResponder):
                self._answers.publish({})
        if isinstance(self._responder, Http01Responder) and not self._responder.running:
            self._responder.start()
        return True

    def _follow(self) -> float:
        """Serve the leader's newest certificate; answer its tls-alpn-01 challenges too."""
        stamp = self._cache.cert_stamp(self.url, self.options.domains)
        if stamp != self._stamp:
            self._stamp = stamp
            self._serve_saved()
        if isinstance(self._responder, TlsAlpnResponder):
            answers = self._answers.changed()
            if answers is not None:
                mirror(self._responder, self._mirrored, answers)
                if set(answers) - set(self._mirrored):
                    log.info("ACME: answering the leading process's tls-alpn-01 challenge "
                             "for %s", ", ".join(sorted(set(answers) - set(self._mirrored))))
                self._mirrored = answers
        return FOLLOW_SECONDS if self._cert is not None else FOLLOW_FIRST_SECONDS

    def _serve_saved(self) -> None:
        cached = self._cache.load_cert(self.url, self.options.domains, self._clock())
        current = self._cert
        if cached is None or (current is not None
                              and cached.leaf.serial_number == current.leaf.serial_number):
            return
        self._serve_cached(cached, current, "the leading process")

    def _serve_cached(self, cached: CachedCert, current: CachedCert | None, by: str) -> None:
        """Serve a certificate another process obtained, and record that this one does."""
        self._install(cached)
        self._failures, self._last_error, self._next_attempt = 0, None, None
        log.info("ACME: serving certificate serial %x from the cache (obtained by %s)",
                 cached.leaf.serial_number, by)
        self._emit("tls.issued" if current is None else "tls.renewed",
                   {**certificate_summary(cached.leaf), "directory": self.url,
                    "source": "cache"})

    def _issuing_responder(self) -> Responder:
        """What an order publishes its answers through: tls-alpn-01 answers also go to the
        followers (and, with followers, the CA is told to look only once they have them)."""
        if isinstance(self._responder, TlsAlpnResponder):
            return Publishing(self._responder, self._answers,
                              SYNC_SECONDS if self._shared else 0.0)
        return self._responder

    def _adopt_newer(self) -> bool:
        """Another process sharing the cache renewed while we waited for the lock: serve its
        certificate instead of ordering one more."""
        cached = self._cache.load_cert(self.url, self.options.domains, self._clock())
        current = self._cert
        if cached is None or (current is not None
                              and cached.leaf.serial_number == current.leaf.serial_number):
            return False
        if fraction_renewal(cached.leaf, self.options.renew_before_fraction) <= self._clock():
            return False
        self._serve_cached(cached, current, "another process")
        return True

    def _planned(self) -> dt.datetime | None:
        """The planned renewal: inside the CA's ARI window when it gave one, else at the
        lifetime fraction."""
        return self._ari_at if self._ari_at is not None else self._renew_at

    def _due(self) -> dt.datetime | None:
        """When to obtain next (None: now): the plan, but not before a failure's backoff."""
        due = self._planned() if self._cert is not None else None
        if self._failures and self._next_attempt is not None:
            due = max(due, self._next_attempt) if due is not None else self._next_attempt
        return due

    # ------------------------------------------------------------------ ARI

    def _poll_ari(self, now: dt.datetime) -> None:
        """RFC 9773: ask the CA for a renewal window when it offers renewalInfo. Soft: any
        failure leaves the lifetime fraction in charge and is retried within the hour."""
        cert = self._cert
        if cert is None or (self._ari_checked is not None and now < self._ari_checked):
            return
        try:
            base = self._client.directory().get("renewalInfo")
            if not base:
                self._ari_checked = now + dt.timedelta(seconds=MAX_SLEEP * 24)
                return
            resp = self._client.get(f"{str(base).rstrip('/')}/{ari_cert_id(cert.leaf)}")
            window = parse_ari(resp.json())
            if window != self._ari:  # a new window: a new random moment in it
                self._ari, self._ari_at = window, ari_renewal(window, self._rng)
            hint = resp.headers.get("retry-after")
            recheck = float(hint) if hint and hint.isdigit() else ARI_DEFAULT_RECHECK
        except (AcmeError, ValueError, KeyError, TypeError) as exc:
            log.debug("ACME: renewalInfo not available (%s); using the lifetime fraction", exc)
            recheck = ARI_RETRY_ON_ERROR
        self._ari_checked = now + dt.timedelta(seconds=min(max(recheck, 60.0), 86400.0))

    # ------------------------------------------------------------------ issuance

    def _issue(self) -> Issued:
        """One issuance; again (once each) after the CA forgot the account (a test CA that
        restarted: the same key registers again) or refused the ARI ``replaces`` (RFC 9773
        section 5: ``alreadyReplaced``, then order without it)."""
        replaces = ""
        if self._cert is not None and self._ari is not None:
            replaces = ari_cert_id(self._cert.leaf)
        account = ensure_account(self._client, self._cache, self.options.email)
        retried: set[str] = set()
        while True:
            try:
                return Issuance(self._client, account, self._issuing_responder()).run(
                    self.options.domains, replaces)
            except AcmeError as exc:
                if exc.problem in retried:
                    raise
                retried.add(exc.problem)
                if exc.problem == ACCOUNT_GONE:
                    log.warning("ACME: the CA no longer knows the account %s; registering the "
                                "same key again", account.url)
                    account = ensure_account(self._client, self._cache, self.options.email,
                                             forget=True)
                elif exc.problem == ALREADY_REPLACED and replaces:
                    replaces = ""
                else:
                    raise

    def _obtain(self) -> None:
        renewing = self._cert is not None
        issued = self._issue()
        self._cache.save_cert(self.url, self.options.domains, issued.chain_pem, issued.key_pem)
        cached = self._cache.load_cert(self.url, self.options.domains, self._clock())
        if cached is None:
            raise AcmeError("badCertificate", "the issued certificate is not usable now "
                            "(key, names or validity)")
        self._install(cached)
        self._failures, self._last_error, self._next_attempt = 0, None, None
        event = "tls.renewed" if renewing else "tls.issued"
        fields = {**certificate_summary(cached.leaf), "directory": self.url,
                  "order": issued.order_url, "next_renewal": self._iso(self._renew_at)}
        log.info("ACME: %s certificate serial %s for %s, expires %s", "renewed" if renewing
                 else "issued", fields["serial"], ", ".join(self.options.domains),
                 fields["not_after"])
        self._emit(event, fields)

    def _failed(self, exc: Exception) -> float:
        now = self._clock()
        retry_after = exc.retry_after if isinstance(exc, AcmeError) else None
        kind = exc.short_type if isinstance(exc, AcmeError) else type(exc).__name__
        detail = exc.detail if isinstance(exc, AcmeError) else str(exc)
        if isinstance(exc, (KeyError, TypeError)):  # an answer without what RFC 8555 promises
            kind, detail = "malformedResponse", f"the ACME server's answer lacks {exc}"
        self._failures += 1
        self._failures_total += 1
        delay = backoff(self._failures, retry_after, self._rng)
        self._last_error, self._last_error_at = f"{kind}: {detail}"[:400], now
        self._next_attempt = now + dt.timedelta(seconds=delay)
        keeping = ("keeping the current certificate" if self._cert is not None
                   else "still no certificate: serving only the challenge")
        log.warning("ACME: obtaining a certificate from %s failed (%s); %s; retrying in %.0f s",
                    self.url, self._last_error, keeping, delay)
        self._emit("tls.acme_failed", {"directory": self.url, "error": self._last_error,
                                       "failures": self._failures,
                                       "retry_in_seconds": round(delay),
                                       "serving_certificate": self._cert is not None})
        return delay

    def _emit(self, event: str, fields: Mapping[str, object]) -> None:
        if self.notify is None:
            return
        try:
            self.notify(event, fields)
        except Exception:  # the certificate stands; the sink logs its own failure
            log.error("ACME: %s could not be recorded in the audit log", event)

    # ------------------------------------------------------------------ status

    @staticmethod
    def _iso(moment: dt.datetime | None) -> str | None:
        return rfc3339(moment) if moment is not None else None

    def status(self) -> dict[str, Any]:
        """What /healthz and the metrics show: serial, expiry and the ACME state."""
        cert = self._cert
        summary = certificate_summary(cert.leaf) if cert is not None else {}
        refused = {"reload_refused": self._trust.refused} if self._trust.refused else {}
        return {
            **refused, **self._trust.trust.status(self._clock()),
            "mode": "acme",
            "serial": summary.get("serial"),
            "not_after": summary.get("not_after"),
            "ocsp": "off",
            "acme": {
                "directory": self.url,
                "domains": list(self.options.domains),
                "challenge": self.options.challenge,
                "state": "serving" if cert is not None else "waiting_for_first_certificate",
                "last_error": self._last_error,
                "last_error_at": self._iso(self._last_error_at),
                "failures": self._failures,
                "failures_total": self._failures_total,
                "next_renewal": self._iso(self._planned()),
                "next_attempt": self._iso(self._next_attempt),
                "renewal_info": self._ari is not None,
                "role": "leader" if self._leader.held else "follower",
            },
        }

    def not_after_timestamp(self) -> float | None:
        cert = self._cert
        return cert.leaf.not_valid_after_utc.timestamp() if cert is not None else None
