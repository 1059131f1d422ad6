"""What every TLS provider reports, and how it reports certificate events.

Shared by the PEM provider (tls/context.py) and the ACME provider: ``status()`` of either is a
dict holding at least ``certificate_summary`` of the served certificate plus ``"ocsp"`` (one of
``OCSP_STATES``), shown in /healthz and turned into metrics by app.py. Certificate events
(``tls.reloaded``, ``tls.reload_refused``, ``tls.ocsp_status``, ``tls.issued``...) go to the
audit log through a ``Notify`` callback the composition root supplies.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

from cryptography import x509

Notify = Callable[[str, Mapping[str, object]], None]
# A CA whose clock runs a little ahead of ours issues certificates "not yet valid" here; clients
# with the right time accept them, so they are served rather than refused (PEM) or ordered
# again (ACME).
CLOCK_LEEWAY = dt.timedelta(minutes=10)
OCSP_STATES = ("off", "good", "revoked", "unknown", "unavailable")


def rfc3339(moment: dt.datetime) -> str:
    """``2026-12-04T17:00:00Z``: UTC, whole seconds."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def certificate_summary(cert: x509.Certificate) -> dict[str, object]:
    """The public facts of a served certificate (anyone can read them off a handshake)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in sans.get_values_for_type(x509.DNSName)]
        addresses = [str(a) for a in sans.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names, addresses = [], []
    return {"serial": format(cert.serial_number, "x"),
            "subject": cert.subject.rfc4514_string(),
            "issuer": cert.issuer.rfc4514_string(),
            "dns_names": names,
            "ip_addresses": addresses,  # the names a client reaching it by address checks
            "not_before": rfc3339(cert.not_valid_before_utc),
            "not_after": rfc3339(cert.not_valid_after_utc)}
