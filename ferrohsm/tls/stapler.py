"""Keeps a fresh, checked OCSP response for the served certificate, on its own thread.

- Refresh at ``refresh_seconds`` after a good fetch or at half the response's validity
  (thisUpdate + (nextUpdate - thisUpdate) / 2), whichever comes first.
- Responder down or answering garbage: the last good response stays stapled until its
  nextUpdate; retries back off exponentially (1 s doubling, capped at ``refresh_seconds`` and at
  5 minutes) with jitter, so a fleet does not hammer a recovering responder in step. At
  nextUpdate stapling stops: an expired response is never stapled (``Staple.current`` also
  checks the time itself, per handshake, should this thread lag).
- A response without nextUpdate is kept for ``refresh_seconds`` after it was fetched.
- ``revoked``: logged at error level, reported in status (hence /healthz and metrics) and
  stapled as the responder said it; the server keeps serving, the operator decides.
Every change of status is a ``tls.ocsp_status`` event for the audit log.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable

from cryptography import x509

from .ocsp import OcspAnswer, OcspError, check, fetch, request_der, responder_url
from .status import Notify, rfc3339

log = logging.getLogger("ferrohsm.tls")
MAX_BACKOFF = 300.0
MIN_DELAY = 1.0


class Staple:
    """The response stapled for one certificate. Read per handshake: two attributes and a
    clock read, nothing else."""

    __slots__ = ("der", "expires")

    def __init__(self) -> None:
        self.der = b""
        self.expires = 0.0  # wall-clock seconds after which ``der`` must not be stapled

    def current(self) -> bytes:
        der = self.der
        return der if der and time.time() < self.expires else b""


class OcspStapler:
    """Fetches and refreshes the OCSP response of the certificate last given to ``track``."""

    def __init__(self, responder: str, refresh_seconds: float, *, timeout: float = 10.0,
                 notify: Notify | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.responder, self.refresh_seconds, self.timeout = responder, refresh_seconds, timeout
        self.notify = notify
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cert: x509.Certificate | None = None
        self._issuer: x509.Certificate | None = None
        self._staple = Staple()
        self._state = "unavailable"
        self._next_update: dt.datetime | None = None
        self._failures = 0
        self._due = 0.0

    # ---- wiring ------------------------------------------------------------------------------

    def track(self, cert: x509.Certificate, issuer: x509.Certificate | None,
              staple: Staple) -> None:
        """A new served context, with the (empty) staple it reads. A new certificate: fetch at
        once. The same one (the context was rebuilt for another reason, a new client CA
        bundle): its response carries over and nothing else changes; dropping it left the
        certificate unstapled, and reported unavailable, while the responder was down."""
        with self._lock:
            if self._cert is not None and cert == self._cert and issuer == self._issuer:
                staple.der, staple.expires = self._staple.der, self._staple.expires
                self._staple = staple
                return
            self._cert, self._issuer, self._staple = cert, issuer, staple
            self._failures, self._due, self._next_update = 0, 0.0, None
        self._set_state("unavailable", "new certificate")
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ferrohsm-ocsp", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1)

    def status(self) -> dict[str, object]:
        """What is stapled now, by the clock, not by what this thread last did: a refresh that
        hangs must not leave a past response reported as good."""
        staple, state = self._staple, self._state
        if state != "unavailable" and not (staple.der and self._clock() < staple.expires):
            state = "unavailable"
        report: dict[str, object] = {"ocsp": state}
        if self._next_update is not None and state != "unavailable":
            report["ocsp_next_update"] = rfc3339(self._next_update)
        return report

    @property
    def state(self) -> str:
        return self._state

    # ---- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self.step()
            except Exception:  # a bug must not end stapling for good
                log.exception("OCSP refresh failed")
                delay = MAX_BACKOFF
            self._wake.wait(delay)
            self._wake.clear()

    def step(self) -> float:
        """One round: drop an expired staple, fetch when due. Seconds until the next round."""
        with self._lock:
            cert, issuer, staple = self._cert, self._issuer, self._staple
        if cert is None:
            return self.refresh_seconds
        now = self._clock()
        if staple.der and now >= staple.expires:
            staple.der = b""
            self._set_state("unavailable", "the last good response reached its nextUpdate"
                            if self._next_update is not None else "the last good response "
                            "(without a nextUpdate) was not refreshed in time")
        if now < self._due:
            return self._until(self._due, staple, now)
        url = responder_url(cert, self.responder)
        if issuer is None or url is None:
            self._due = now + self.refresh_seconds
            self._set_state("unavailable", "no issuer certificate in the chain file"
                            if issuer is None else "no OCSP responder URL (AIA or ocsp_responder)")
            return self.refresh_seconds
        try:
            answer = check(fetch(url, request_der(cert, issuer), self.timeout), cert, issuer,
                           dt.datetime.fromtimestamp(now, dt.UTC))
        except OcspError as exc:
            if cert is not self._cert:
                return 0.0  # replaced meanwhile: fetch for the new one
            return self._failed(str(exc), staple, now)
        return self._succeeded(answer, cert, staple, now)

    def _succeeded(self, answer: OcspAnswer, cert: x509.Certificate, staple: Staple,
                   now: float) -> float:
        with self._lock:
            if cert is not self._cert:
                return 0.0  # replaced meanwhile: fetch for the new one
            staple = self._staple  # the one served now: a context rebuilt meanwhile for the
            self._failures = 0     # same certificate (track) has a new one, not the one read
            # no nextUpdate ("newer information is always available", RFC 6960): held for two
            # refreshes, so the next fetch replaces it before it is dropped (it was held for
            # one, and dropped at the very moment of the fetch: unavailable, then good, again)
            expires = (answer.next_update.timestamp() if answer.next_update is not None
                       else now + 2 * self.refresh_seconds)
            staple.der, staple.expires = answer.der, expires
            self._next_update = answer.next_update
            refresh = now + self.refresh_seconds
            if answer.next_update is not None:
                half = answer.this_update.timestamp() + (expires
                                                         - answer.this_update.timestamp()) / 2
                refresh = min(refresh, half)
            self._due = max(refresh, now + MIN_DELAY)
        self._set_state(answer.status, f"OCSP response for serial {cert.serial_number:x}",
                        serial=format(cert.serial_number, "x"))
        return self._due - now

    def _failed(self, reason: str, staple: Staple, now: float) -> float:
        self._failures += 1
        cap = min(MAX_BACKOFF, max(MIN_DELAY, self.refresh_seconds))
        backoff = min(cap, MIN_DELAY * 2 ** min(self._failures - 1, 16))
        delay = backoff * random.uniform(0.5, 1.0)  # noqa: S311  jitter, not a secret
        self._due = now + delay
        kept = bool(staple.der) and now < staple.expires
        log.warning("OCSP refresh failed (attempt %d, next in %.1fs; %s): %s", self._failures,
                    delay, "keeping the last good response until its nextUpdate" if kept
                    else "nothing stapled", reason)
        if not kept:
            self._set_state("unavailable", reason)
        return self._until(self._due, staple, now)

    def _until(self, due: float, staple: Staple, now: float) -> float:
        """Seconds to ``due``, or to the staple's expiry when that comes first."""
        target = min(due, staple.expires) if staple.der else due
        return max(0.05, target - now)

    def _set_state(self, state: str, reason: str, **fields: object) -> None:
        if state == self._state:
            return
        previous, self._state = self._state, state
        level = logging.ERROR if state == "revoked" else logging.INFO
        log.log(level, "OCSP status %s -> %s: %s", previous, state, reason)
        if self.notify is None:
            return
        try:
            self.notify("tls.ocsp_status", {"status": state, "previous": previous,
                                            "reason": reason, **fields})
        except Exception:  # the status stands; a failed record is logged by the sink
            log.error("OCSP status change could not be recorded in the audit log")
