"""HTTP request methods as OpenTelemetry's semantic conventions name them in spans, metrics and
access lines.

The server answers any method token (a 405 or 404 for most), so a client sending made-up methods
must not mint a metric series, a span name or a cached log fragment for each: methods outside the
registry are named ``_OTHER`` (span name ``HTTP``), and the method as sent goes only into
``http.request.method_original`` (bounded, per request, never a label).
"""

from __future__ import annotations

KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT",
                           "QUERY", "TRACE"})
OTHER = "_OTHER"
ORIGINAL_LIMIT = 32  # characters of an unknown method kept in http.request.method_original


def method_label(method: str) -> str:
    """``method`` when the conventions know it, else ``_OTHER``."""
    return method if method in KNOWN_METHODS else OTHER


def method_original(method: str) -> str | None:
    """The method as sent, for ``http.request.method_original``: only when it is not known."""
    return None if method in KNOWN_METHODS else method[:ORIGINAL_LIMIT]


def span_method(label: str) -> str:
    """The method part of a span's name: ``HTTP`` for ``_OTHER``."""
    return "HTTP" if label == OTHER else label
