"""The HTTP/1.1 wire format: strict request-head parsing and response rendering (pure), and
``ConnectionIO``, which reads one connection's requests under deadlines (the only I/O here).

Theory of operation: the server reads bytes into a buffer and asks ``find_head_end`` whether the
head (request line + header fields + blank line) is complete; limits are checked on the partial
buffer too, so an attacker cannot make us buffer more than the limits while we wait. Once complete,
``parse_head`` validates the request line and every field and applies the framing rules
(``RequestHead``). Every rejection raises a ``FerroError`` subclass; the server answers it with
``error_response`` and closes the connection, because after a framing error we can no longer tell
where the next request would start.

The rules are deliberately stricter than RFC 9112 allows a recipient to be (it permits some
leniency; we take none): a request smuggled through a lenient proxy must not be parsed two ways.
Policy choices worth knowing:

- Any ``Transfer-Encoding`` is refused with 400 (we never accept chunked bodies; a request with
  both TE and Content-Length is the classic smuggling shape).
- Methods must be 1-20 upper-case letters; unknown but well-formed methods reach the application,
  whose router answers 405 (path known) or 404.
- Only origin-form targets (``/path?query``); ``*``, absolute-form and authority-form get 400.
- Bare LF line endings, obs-fold, whitespace before the colon, control characters: 400.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qs

from ..errors import (
    BadRequest,
    ExpectationFailed,
    FerroError,
    HeaderFieldsTooLarge,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    UriTooLong,
    VersionNotSupported,
)
from .http import Headers, Request, Response, pick_request_id

_METHOD_RE = re.compile(rb"[A-Z]{1,20}")
# RFC 3986 pchar / query characters, '%' for pct-encoding. No fragment, no space, no CTL.
_TARGET_RE = re.compile(rb"/[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]*")
_VERSION_RE = re.compile(rb"HTTP/[0-9]\.[0-9]")
# Name and raw value only: trimming OWS with the regex itself (``[ \t]*(.*?)[ \t]*``) backtracks
# quadratically on a value full of spaces (seconds of CPU for one 30 KB header).
_FIELD_RE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):(.*)", re.DOTALL)
_BAD_VALUE_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTENT_LENGTH_RE = re.compile(r"[0-9]{1,10}")
_REQUEST_ID_SCAN_RE = re.compile(rb"(?im)^x-request-id:[ \t]*([A-Za-z0-9._:-]{1,128})[ \t]*\r?$")
MAX_QUERY_FIELDS = 100

# Response side: headers the server owns (an application value would break framing).
_SERVER_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "x-request-id"}
)
_OUT_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_OUT_VALUE_RE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_date_cache: tuple[int, str] = (0, "")


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits; every one of them is enforced before the application runs."""

    max_request_line: int = 8192
    max_header_bytes: int = 32768
    max_headers: int = 100
    max_body: int = 1 << 20


@dataclass(slots=True)
class RequestHead:
    """A validated request head plus the framing decisions derived from it."""

    method: str
    target: str
    path: str
    query_string: str
    version: str
    headers: Headers
    content_length: int
    keep_alive: bool
    expect_continue: bool


def find_head_end(buf: bytes | bytearray, scan_from: int, limits: Limits) -> int:
    """Index of the CRLFCRLF ending the head in ``buf``, or -1 if more bytes are needed.

    Raises on an over-long request line (414) or header section (431) even before the head is
    complete, and on bare LF line endings (which would otherwise leave us waiting for a CRLFCRLF
    that a lenient client never sends).
    """
    end = buf.find(b"\r\n\r\n", scan_from)
    line_end = buf.find(b"\r\n", 0, limits.max_request_line + 2)
    if line_end < 0 and (end >= 0 or len(buf) > limits.max_request_line):
        raise UriTooLong("request line too long")
    header_bytes = (end if end >= 0 else len(buf)) - line_end - 2 if line_end >= 0 else 0
    if header_bytes > limits.max_header_bytes:
        raise HeaderFieldsTooLarge("header section too large")
    if end < 0 and buf.count(b"\n") != buf.count(b"\r\n"):
        raise BadRequest("bare LF in request head; lines must end with CRLF")
    return end


def scan_request_id(raw: bytes | bytearray) -> str | None:
    """Best-effort X-Request-ID from a head we refused to parse, so errors still echo it."""
    match = _REQUEST_ID_SCAN_RE.search(raw)
    return match.group(1).decode("ascii") if match else None


def parse_head(head: bytes, limits: Limits) -> RequestHead:
    """Validate a complete head (without its final CRLFCRLF) and derive the framing."""
    lines = head.split(b"\r\n")
    method, target, version = _parse_request_line(lines[0])
    if len(lines) - 1 > limits.max_headers:
        raise HeaderFieldsTooLarge(f"more than {limits.max_headers} header fields")
    headers = Headers([_parse_field(line) for line in lines[1:]])
    path, _, query_string = target.partition("?")
    _check_host(headers, version)
    content_length = _content_length(headers, limits)
    return RequestHead(
        method=method,
        target=target,
        path=path,
        query_string=query_string,
        version=version,
        headers=headers,
        content_length=content_length,
        keep_alive=_keep_alive(headers, version),
        expect_continue=_expect_continue(headers) and version == "HTTP/1.1",
    )


def parse_query(query_string: str) -> dict[str, list[str]]:
    """Decoded query parameters; bad UTF-8 or too many fields is a 400, not a silent mangle."""
    if not query_string:
        return {}
    try:
        return parse_qs(
            query_string,
            keep_blank_values=True,
            errors="strict",
            max_num_fields=MAX_QUERY_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("invalid query string") from None


def _parse_request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) == 2 and _METHOD_RE.fullmatch(parts[0]):
        raise BadRequest("HTTP/0.9 requests are not supported")
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    method, target, version = parts
    if not _VERSION_RE.fullmatch(version):
        raise BadRequest("malformed HTTP version")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise VersionNotSupported("only HTTP/1.1 and HTTP/1.0 are supported")
    if not _METHOD_RE.fullmatch(method):
        raise BadRequest("malformed method")
    if target == b"*":
        raise BadRequest("asterisk-form request target is not supported")
    if not _TARGET_RE.fullmatch(target):
        raise BadRequest("request target must be origin-form without invalid characters")
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")


def _parse_field(line: bytes) -> tuple[str, str]:
    match = _FIELD_RE.fullmatch(line)
    if match is None or _BAD_VALUE_RE.search(match.group(2)):
        raise BadRequest(_diagnose_field(line))
    return match.group(1).decode("ascii"), match.group(2).strip(b" \t").decode("latin-1")


def _diagnose_field(line: bytes) -> str:
    """A precise message for a refused header line (error path only, so speed is irrelevant)."""
    if line[:1] in (b" ", b"\t"):
        return "obsolete line folding (obs-fold) is not accepted"
    name, colon, _ = line.partition(b":")
    if not colon:
        return "header line without a colon"
    if name[-1:] in (b" ", b"\t"):
        return "whitespace between header name and colon"
    if not _TOKEN_RE.fullmatch(name):
        return "header name is not a token"
    return "control character in header value"


def _check_host(headers: Headers, version: str) -> None:
    """Exactly one Host in HTTP/1.1 (RFC 9112 section 3.2), at most one in HTTP/1.0."""
    count = len(headers.get_all("host"))
    if count > 1:
        raise BadRequest("more than one Host header")
    if count == 0 and version == "HTTP/1.1":
        raise BadRequest("HTTP/1.1 request without a Host header")


def _content_length(headers: Headers, limits: Limits) -> int:
    """Body length from the single, strictly formatted Content-Length; TE is refused."""
    if "transfer-encoding" in headers:
        raise BadRequest("Transfer-Encoding is not accepted; send Content-Length")
    values = headers.get_all("content-length")
    if not values:
        return 0
    if len(values) > 1:
        raise BadRequest("more than one Content-Length header")
    if not _CONTENT_LENGTH_RE.fullmatch(values[0]):
        raise BadRequest("malformed Content-Length")
    length = int(values[0])
    if length > limits.max_body:
        raise PayloadTooLarge(f"request body larger than {limits.max_body} bytes")
    if length and not _is_json(headers.get("content-type")):
        raise UnsupportedMediaType("request bodies must be application/json")
    return length


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    return content_type.partition(";")[0].strip().lower() == "application/json"


def _keep_alive(headers: Headers, version: str) -> bool:
    """HTTP/1.1 persists unless ``close``; HTTP/1.0 only with an explicit ``keep-alive``."""
    tokens = {
        token.strip().lower()
        for value in headers.get_all("connection")
        for token in value.split(",")
    }
    if version == "HTTP/1.1":
        return "close" not in tokens
    return "keep-alive" in tokens and "close" not in tokens


def _expect_continue(headers: Headers) -> bool:
    values = headers.get_all("expect")
    if not values:
        return False
    if len(values) == 1 and values[0].lower() == "100-continue":
        return True
    raise ExpectationFailed("only 'Expect: 100-continue' is supported")


def http_date() -> str:
    """IMF-fixdate for the Date header, formatted at most once per second (it is on every
    response, and formatdate costs more than the rest of the header block)."""
    global _date_cache
    now = int(time.time())
    cached = _date_cache
    if cached[0] != now:
        cached = (now, formatdate(now, usegmt=True))
        _date_cache = cached
    return cached[1]


def render_response(
    response: Response,
    request_id: str,
    keep_alive: bool,
    http10_keep_alive: bool = False,
    head_only: bool = False,
) -> bytes:
    """Status line, headers and body as ONE buffer, so the server writes it with one sendall.

    Raises ValueError for anything that would corrupt the stream (CR/LF in a header: response
    splitting; a non-bytes body; a 1xx status); the server then answers 500 instead.
    """
    status, body = response.status, response.body
    if not 200 <= status <= 599 or not isinstance(body, (bytes, bytearray)):
        raise ValueError("invalid response status or body type")
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    for name, value in response.headers:
        if not _OUT_NAME_RE.fullmatch(name) or not _OUT_VALUE_RE.fullmatch(value):
            raise ValueError(f"invalid response header {name[:40]!r}")
        if name.lower() not in _SERVER_HEADERS:
            lines.append(f"{name}: {value}")
    lines.append(f"X-Request-ID: {request_id}")
    lines.append(f"Date: {http_date()}")
    if status in (204, 304):
        body = b""
    else:
        lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    elif http10_keep_alive:
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


# ====================================================================== the I/O half
# Everything above is pure. Below: one connection's socket and buffer, read under deadlines and
# handed to the functions above. server.py owns threads, slots and the connection lifecycle.

_RECV_SIZE = 65536
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class PeerGone(Exception):
    """The connection is over: EOF, reset, idle timeout, or closed by the server meanwhile."""


class Conn:
    """One accepted connection: its socket (plain, then TLS), peer and receive buffer."""

    __slots__ = ("buf", "client_cert_der", "evicted", "idle", "idle_since", "peer_ip",
                 "peer_port", "sock")

    def __init__(self, sock: socket.socket, peer_ip: str, peer_port: int) -> None:
        self.sock = sock
        self.peer_ip, self.peer_port = peer_ip, peer_port
        self.client_cert_der: bytes | None = None
        self.buf = bytearray()
        self.idle = True  # waiting for a (first or next) request: safe to close at any time
        self.idle_since = time.monotonic()
        self.evicted = False

    def kill(self) -> None:
        """Wake whatever thread is blocked on this socket (called from another thread).

        ``socket.socket.shutdown`` on purpose: SSLSocket.shutdown would also drop its SSL
        object under the feet of the worker thread that is using it.
        """
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass(slots=True)
class ReadResult:
    """A request read off the wire, or the framing error that stopped us reading it."""

    request: Request
    error: FerroError | None
    keep_alive: bool
    http10_keep_alive: bool


class ConnectionIO:
    """Reads requests from and writes responses to one connection, under deadlines."""

    def __init__(self, conn: Conn, limits: Limits) -> None:
        self.conn = conn
        self.limits = limits
        self._raw_head = b""
        # recv_into a reused chunk: recv(65536) would allocate 64 KiB per read, then shrink it.
        self._chunk = memoryview(bytearray(_RECV_SIZE))

    def read_request(self, wait: float, header_timeout: float, body_timeout: float,
                     first: bool, set_busy: Callable[[Conn], bool]) -> ReadResult | None:
        """The next request; None when the connection should just be closed silently.

        ``wait`` bounds the idle time before the request's first byte. The head deadline starts
        at that first byte, except on a fresh connection where it starts after the handshake.
        """
        start = time.monotonic()
        if not self.conn.buf:
            try:
                self._recv(start + wait)
            except (RequestTimeout, PeerGone):
                return None
        if not set_busy(self.conn):
            return None
        received_at = time.monotonic()
        head: RequestHead | None = None
        self._raw_head = b""
        try:
            head = self._read_head((start if first else received_at) + header_timeout)
            body = self._read_body(head, body_timeout)
            request = self._request(head, body, received_at)
        except PeerGone:
            return None
        except FerroError as exc:
            raw = self._raw_head or bytes(self.conn.buf[: self.limits.max_header_bytes])
            request_id = pick_request_id(scan_request_id(raw))
            return ReadResult(self._bare_request(head, request_id, received_at), exc, False, False)
        http10 = head.keep_alive and head.version == "HTTP/1.0"
        return ReadResult(request, None, head.keep_alive, http10)

    def send(self, payload: bytes, timeout: float) -> None:
        """One sendall per response (PERF-NOTES: split writes + Nagle = 40 ms stalls)."""
        try:
            self.conn.sock.settimeout(timeout)
            self.conn.sock.sendall(payload)
        except OSError:
            raise PeerGone from None

    def linger(self, timeout: float) -> None:
        """Half-close, then drain briefly: closing with unread input makes the kernel send a
        RST, which can destroy the error response before the client has read it."""
        sock = self.conn.sock
        try:
            socket.socket.shutdown(sock, socket.SHUT_WR)
            deadline = time.monotonic() + timeout
            drained = 0
            while drained < self.limits.max_body:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                sock.settimeout(remaining)
                data = sock.recv(_RECV_SIZE)
                if not data:
                    return
                drained += len(data)
        except (OSError, ValueError):
            return

    def _recv(self, deadline: float) -> None:
        """Append at least one byte to the buffer before ``deadline``."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RequestTimeout("request not received in time")
        sock = self.conn.sock
        try:
            sock.settimeout(remaining)
            count = sock.recv_into(self._chunk)
        except TimeoutError:
            raise RequestTimeout("request not received in time") from None
        except (OSError, ValueError):
            raise PeerGone from None
        if not count:
            raise PeerGone
        self.conn.buf += self._chunk[:count]

    def _read_head(self, deadline: float) -> RequestHead:
        buf, scan = self.conn.buf, 0
        while True:
            while buf[:2] == b"\r\n":  # RFC 9112 2.2: ignore empty lines before a request
                del buf[:2]
                scan = 0
            end = find_head_end(buf, scan, self.limits)
            if end >= 0:
                break
            scan = max(0, len(buf) - 3)
            self._recv(deadline)
        self._raw_head = bytes(buf[:end])
        del buf[: end + 4]
        return parse_head(self._raw_head, self.limits)

    def _read_body(self, head: RequestHead, body_timeout: float) -> bytes:
        length, buf = head.content_length, self.conn.buf
        if not length:
            return b""
        if head.expect_continue and len(buf) < length:
            self.send(_CONTINUE, body_timeout)
        deadline = time.monotonic() + body_timeout
        while len(buf) < length:
            self._recv(deadline)
        body = bytes(buf[:length])
        del buf[:length]
        return body

    def _request(self, head: RequestHead, body: bytes, received_at: float) -> Request:
        conn = self.conn
        return Request(
            method=head.method,
            target=head.target,
            path=head.path,
            query=parse_query(head.query_string),
            headers=head.headers,
            body=body,
            peer_ip=conn.peer_ip,
            peer_port=conn.peer_port,
            client_cert_der=conn.client_cert_der,
            request_id=pick_request_id(head.headers.get("x-request-id")),
            received_at=received_at,
            http_version=head.version,
        )

    def _bare_request(self, head: RequestHead | None, request_id: str,
                      received_at: float) -> Request:
        """What we know of a request refused before the app (for error bodies and access logs)."""
        conn = self.conn
        return Request(
            method=head.method if head else "",
            target=head.target if head else "",
            path=head.path if head else "",
            query={},
            headers=head.headers if head else Headers(),
            body=b"",
            peer_ip=conn.peer_ip,
            peer_port=conn.peer_port,
            client_cert_der=conn.client_cert_der,
            request_id=request_id,
            received_at=received_at,
            http_version=head.version if head else "HTTP/1.1",
        )
