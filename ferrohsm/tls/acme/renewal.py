"""When to renew, and how long to wait after a failure.

Without ARI: when ``renew_before_fraction`` of the certificate's lifetime is left (0.33 of a
90-day certificate: about 30 days before expiry, what Let's Encrypt recommends). With ARI
(RFC 9773, when the directory names ``renewalInfo``): at a random moment inside the window the
CA suggests, which lets the CA spread renewals and pull them forward (a mass revocation); the
fraction stays the fallback whenever renewalInfo cannot be had. Failures back off exponentially
with jitter, never sooner than a ``Retry-After`` the CA sent, and at most an hour apart unless that
``Retry-After`` asks for longer (a rate limit can last a week).
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from .jws import b64url

BACKOFF_FIRST = 5.0
BACKOFF_MAX = 3600.0
ARI_DEFAULT_RECHECK = 6 * 3600.0  # RFC 9773 section 4.3: without Retry-After, poll ~6 hourly


def fraction_renewal(cert: x509.Certificate, fraction: float) -> dt.datetime:
    """The moment when ``fraction`` of the lifetime is left."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return end - (end - start) * fraction


def ari_cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 section 4.1: base64url(AKI keyIdentifier) '.' base64url(serial DER bytes)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    if aki.key_identifier is None:
        raise ValueError("the certificate's AKI has no keyIdentifier")
    return f"{b64url(aki.key_identifier)}.{b64url(serial_bytes(cert.serial_number))}"


def serial_bytes(serial: int) -> bytes:
    """The DER INTEGER content of a serial (a leading zero byte when the top bit is set)."""
    length = serial.bit_length() // 8 + 1
    return serial.to_bytes(length, "big")


@dataclass(frozen=True)
class AriWindow:
    start: dt.datetime
    end: dt.datetime


def parse_ari(doc: Any) -> AriWindow:
    """The ``suggestedWindow`` of a renewalInfo response; ValueError when malformed."""
    window = doc["suggestedWindow"] if isinstance(doc, dict) else None
    if not isinstance(window, dict):
        raise ValueError("renewalInfo without suggestedWindow")
    start = dt.datetime.fromisoformat(str(window["start"]).replace("Z", "+00:00"))
    end = dt.datetime.fromisoformat(str(window["end"]).replace("Z", "+00:00"))
    if start.tzinfo is None or end.tzinfo is None or end < start:
        raise ValueError("renewalInfo window is not a UTC interval")
    return AriWindow(start.astimezone(dt.UTC), end.astimezone(dt.UTC))


def ari_renewal(window: AriWindow, rng: random.Random) -> dt.datetime:
    """A uniformly random moment in the window (RFC 9773 section 4.2)."""
    span = (window.end - window.start).total_seconds()
    return window.start + dt.timedelta(seconds=rng.uniform(0.0, max(span, 0.0)))


def backoff(failures: int, retry_after: float | None, rng: random.Random) -> float:
    """Seconds to wait after ``failures`` consecutive failures (>= 1)."""
    delay = min(BACKOFF_FIRST * 2 ** max(failures - 1, 0), BACKOFF_MAX)
    delay *= rng.uniform(0.8, 1.2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return float(min(delay, max(BACKOFF_MAX, retry_after or 0.0)))
