"""Failed TLS handshakes, counted by reason and logged at most once a minute per reason.

A refused client certificate, a TLS 1.2 client or plain HTTP to the TLS port used to leave a
DEBUG line only, so an operator whose clients all failed (an expired client CA, a missing
certificate after a deploy) saw nothing. The reasons are a small fixed set so the metric
``ferrohsm_tls_handshake_failures_total{reason}`` stays bounded whatever clients send; the log
names the peer's address, the reason and OpenSSL's short verdict (never certificate content).
A peer that closes mid-handshake (a TCP health check, a port scan) is counted as ``closed``
but not logged: load balancers do it every few seconds. So is one gone before the handshake
began (a reset after sending a byte fails the TLS wrapper itself: "Closed before TLS handshake",
ENOTCONN); an outside tester's 2,000 such connections once wrote a warning each. The
handshake path pays one dict lookup and one counter increment per failure, nothing per success.
"""

from __future__ import annotations

import errno
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

LOG_EVERY = 60.0  # seconds: at most one warning per reason in this window
# (reason, words of OpenSSL's error, from ssl's ``reason`` or pyOpenSSL's message), in order
_MATCH = (("plain_http", ("http request",)),
          ("client_certificate_required", ("peer did not return a certificate",)),
          ("client_certificate_refused", ("certificate verify failed", "unsupported certificate",
                                          "bad certificate", "certificate revoked")),
          ("protocol_version", ("unsupported protocol", "wrong version number",
                                "version too low", "protocol version", "no shared cipher")))


def classify(exc: BaseException) -> str:
    """One of telemetry.metrics.TLS_HANDSHAKE_FAILURE_REASONS."""
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError)) or \
            getattr(exc, "errno", None) == errno.ENOTCONN:
        return "closed"
    text = f"{getattr(exc, 'reason', None) or ''} {exc}".lower().replace("_", " ")
    for reason, words in _MATCH:
        if any(word in text for word in words):
            return reason
    return "other"


def _detail(exc: BaseException | None, version: str | None) -> str:
    if exc is None:
        return f"{version} negotiated, TLS 1.3 only"
    verdict = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
    return str(verdict or type(exc).__name__)


class HandshakeFailures:
    """What the event loop calls when a handshake fails (only the loop's thread calls it)."""

    def __init__(self, log: logging.Logger, app: Callable[[], Any] = lambda: None,
                 every: float = LOG_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        """``app``: the server's application now; its ``metrics`` (when it has them: a seal
        gate has none) hold the counter."""
        self.log, self._app, self.every, self._clock = log, app, every, clock
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def failed(self, peer: str, exc: BaseException | None, version: str | None = None) -> str:
        """Count and maybe log one failure (``exc`` None: a version below TLS 1.3 was
        negotiated anyway); the reason."""
        reason = classify(exc) if exc is not None else "protocol_version"
        counter = getattr(getattr(self._app(), "metrics", None), "tls_handshake_failures", None)
        if counter is not None:
            counter.inc(reason)
        now, last = self._clock(), self._last.get(reason)
        if reason == "closed" or (last is not None and now - last < self.every):
            self._quiet[reason] = self._quiet.get(reason, 0) + 1
            self.log.debug("TLS handshake with %s failed (%s): %s", peer, reason, exc)
            return reason
        self._last[reason] = now
        missed = self._quiet.pop(reason, 0)
        more = f" ({missed} more since the last such line)" if missed else ""
        self.log.warning("TLS handshake with %s failed (%s): %s%s", peer, reason,
                         _detail(exc, version), more)
        return reason
