"""What the provider reports: the notify hook's type and a certificate's public summary.

Kept in step with ``ferrohsm/tls/status.py`` of the PEM/OCSP work (same names and shapes) so
the two can be unified: ``Notify(event, fields)`` is wired by the composition root to a
durable audit append, and ``certificate_summary`` is what /healthz and audit records show of a
certificate (never anything secret: serial, names, validity, issuer).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

from cryptography import x509

Notify = Callable[[str, Mapping[str, object]], None]


def rfc3339(moment: dt.datetime) -> str:
    """``2026-12-04T17:00:00Z``: UTC, whole seconds."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def certificate_summary(cert: x509.Certificate) -> dict[str, object]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in sans.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    return {
        "serial": format(cert.serial_number, "x"),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "dns_names": names,
        "not_before": rfc3339(cert.not_valid_before_utc),
        "not_after": rfc3339(cert.not_valid_after_utc),
    }
