"""Plain HTTP data types shared by the transport (server.py) and the application (handlers).

The server turns bytes into a ``Request`` and a ``Response`` back into bytes; the application only
ever sees these two types, so handlers are testable without sockets. ``error_response`` is THE one
place where a ``FerroError`` becomes an HTTP status and body: nothing else picks a status for an
error, and nothing puts a traceback in a body.

The few statuses that only the transport produces (408, 414, 417, 431, 505) get their own
``FerroError`` subclasses here, so they flow through ``error_response`` like every other error.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..domain.errors import (
    ApprovalRequired,
    FerroError,
    MethodNotAllowed,
    StoreError,
    Unauthenticated,
)
from ..domain.ids import uuid4_str

log = logging.getLogger("ferrohsm.api")
STORE_UNAVAILABLE = ("the key store is unavailable; the request was refused (the server log and "
                     "the audit log name the cause)")

JSON_CONTENT_TYPE = "application/json"

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")




class Headers:
    """Case-insensitive multi-map over the header fields in the order they were received.

    Values are kept exactly as received (minus surrounding whitespace): joining repeated fields is
    left to the caller, because for some fields (Content-Length, Host) repetition is an error
    rather than a list.
    """

    __slots__ = ("_fields", "_index")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: list[tuple[str, str]] = list(fields)
        self._index: dict[str, list[str]] = {}
        for name, value in self._fields:
            self._index.setdefault(name.lower(), []).append(value)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default`` when absent."""
        values = self._index.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        return list(self._index.get(name.lower(), ()))

    def values_of(self, lowered: str) -> Sequence[str]:
        """Every value of an already lower-case name, without copying (framing checks run on
        every request): do not modify the result."""
        return self._index.get(lowered, ())

    def items(self) -> list[tuple[str, str]]:
        """Every field as received (original name case), repeated fields included."""
        return list(self._fields)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        # Never print values: Authorization carries a bearer token.
        return f"Headers({sorted(self._index)})"


@dataclass(slots=True)
class Request:
    """One parsed request. ``path`` is the raw (still percent-encoded) path: the router decodes
    path parameters exactly once, so nothing upstream may decode it first."""

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: Headers
    body: bytes
    peer_ip: str
    peer_port: int
    client_cert_der: bytes | None
    request_id: str
    received_at: float
    http_version: str = "HTTP/1.1"
    route: Any = None  # (Route, params) once matched, so the server's inline check is not repeated
    # The audit tickets of the records made for this request, when the server answers only once
    # they are durable (api/dispatch.py gives an inline request an empty list; the application
    # hands it on as RequestContext.tickets). None: every record is durable when made.
    tickets: list[Any] | None = None
    # Set by the application once the request carried a valid token: the server then counts its
    # connection (and, for a while, its source address) as authenticated (api/server.py).
    authenticated: bool = False
    # The request's server span (telemetry/tracing.RequestSpan, a record filled in place) when
    # spans are exported; the server's on_request hook ends it once the final response is
    # written.
    trace: Any = None
    # What the application will log and count for this request once its final answer is
    # written (a request whose records settle later: the answer may yet become a 503).
    observed: Any = None


@dataclass(slots=True)
class Response:
    """What the application returns. The server adds Content-Length, Date, Connection and
    X-Request-ID itself; ``close=True`` ends the keep-alive connection after this response."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


def is_sane_request_id(value: str | None) -> bool:
    """A client-supplied X-Request-ID we are willing to echo and log (no injection, bounded)."""
    return value is not None and _REQUEST_ID_RE.fullmatch(value) is not None


def pick_request_id(client_value: str | None) -> str:
    """The client's request id when sane, else a fresh UUID4."""
    if client_value is not None and _REQUEST_ID_RE.fullmatch(client_value):
        return client_value
    return uuid4_str()


def json_response(
    status: int, obj: Any, headers: Iterable[tuple[str, str]] = ()
) -> Response:
    """Compact UTF-8 JSON (no spaces: smaller and what SDKs byte-compare in tests).

    Cannot fail on any str: a lone surrogate (stored before bodies refused them) only occurs
    inside a JSON string, where backslashreplace writes it as the JSON escape ``\\udfff``."""
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "backslashreplace")
    return Response(status, body, [("Content-Type", JSON_CONTENT_TYPE), *headers])


def error_object(exc: FerroError, request_id: str | None = None) -> dict[str, Any]:
    """The error body of docs/api.md: code, message, the request id (none for ONE item of a
    batch: the batch answer's X-Request-ID is the one), the request member at fault, and the
    approval when the request or item was parked for one (a 202 carries it)."""
    error: dict[str, Any] = {"code": exc.code, "message": public_message(exc, request_id)}
    if request_id is not None:
        error["request_id"] = request_id
    if isinstance(field := exc.details.get("field"), str):
        error["field"] = field
    body: dict[str, Any] = {"error": error}
    if isinstance(exc, ApprovalRequired) and "approval" in exc.details:
        body["approval"] = exc.details["approval"]
    return body


def public_message(exc: FerroError, request_id: str | None = None) -> str:
    """What a caller is told: the error's message, except a key store failure's, which names
    the database's address and what it said: the operator's (the server log here, and the
    refusal's audit record), not every caller's."""
    if not isinstance(exc, StoreError):
        return exc.message
    log.warning("key store error: %s", exc.message, extra={"request_id": request_id})
    return STORE_UNAVAILABLE


def retry_after(exc: FerroError) -> list[tuple[str, str]]:
    """``Retry-After`` for a refusal that knows when to come back (a rate limit, 429; an
    AES-GCM count being renewed, 503), else nothing."""
    seconds = getattr(exc, "retry_after", None)
    if not isinstance(seconds, int | float):
        return []
    return [("Retry-After", str(max(1, math.ceil(seconds))))]


def error_response(exc: FerroError, request_id: str) -> Response:
    """Map a FerroError to the error body of docs/api.md, with the headers its status requires."""
    extra = retry_after(exc)
    if isinstance(exc, MethodNotAllowed):
        extra.append(("Allow", ", ".join(exc.allow)))
    elif isinstance(exc, Unauthenticated):
        extra.append(("WWW-Authenticate", 'Bearer error="invalid_token"'))
    return json_response(exc.status, error_object(exc, request_id), extra)
