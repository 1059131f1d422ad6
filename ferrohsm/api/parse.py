"""The HTTP/1.1 wire format: strict request-head parsing and response rendering. Pure: no I/O
(connection.py feeds it bytes, server.py owns the sockets).

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

- ``Transfer-Encoding`` is accepted in exactly one form: one field whose value is exactly
  ``chunked`` (lower case), in HTTP/1.1, without Content-Length (both together is the classic
  smuggling shape: 400). Any other coding, a list (``gzip, chunked``, ``chunked, chunked``), a
  repeated field, other case or whitespace inside: 400. The chunked body (``ChunkedBody``) is
  decoded strictly: sizes are 1-8 hex digits (no sign, ``0x``, whitespace or extension: chunk
  extensions are refused, not ignored), every line ends with CRLF, trailer fields are refused,
  and the decoded total is held to ``max_body`` (413 as soon as a chunk size would pass it).
- Methods must be 1-20 upper-case letters; unknown but well-formed methods reach the application,
  whose router answers 405 (path known) or 404.
- Origin-form targets (``/path?query``), and the absolute-form RFC 9112 section 3.2.2 says a server
  MUST accept (``https://host:port/path?query``, http or https only, no userinfo): its path and
  query become the target, checked as an origin-form one (nothing decoded: router.py), and the
  Host header is ignored for it (nothing here routes on a host). ``*`` and authority-form: 400.
- Bytes that cannot begin a request line (a method, 1+ tchar, then SP) are refused as soon as
  they are read (``check_request_start``), not held until the header timeout.
- Request bodies must be declared ``application/json``; only under ``/v1/transit/`` (Vault's
  clients) may the Content-Type be absent.
- Bare LF line endings, obs-fold, whitespace before the colon, control characters: 400.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qs

from ..domain.errors import (
    BadRequest,
    ExpectationFailed,
    FerroError,
    HeaderFieldsTooLarge,
    PayloadTooLarge,
    UnsupportedMediaType,
    UriTooLong,
    VersionNotSupported,
)
from .http import Headers, Request, Response, pick_request_id

_METHOD_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,20}")  # RFC 9110 token, at most 20
# RFC 3986 pchar / query characters, '%' for pct-encoding. No fragment, no space, no CTL.
_TARGET_RE = re.compile(rb"/[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]*")
_VERSION_RE = re.compile(rb"HTTP/[0-9]\.[0-9]")
# The absolute-form (RFC 9112 3.2.2): http(s)://authority, then the path and query (group 1,
# checked with _TARGET_RE). The authority is an IP literal or a reg-name with an optional port;
# userinfo ("@") is refused, as RFC 9110 4.2.4 asks of a recipient.
_ABSOLUTE_RE = re.compile(
    rb"(?i:https?)://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+)(?::[0-9]{0,5})?"
    rb"([/?][^#]*)?")
# What the bytes of a request read so far must be, once leading empty lines are skipped: a
# method (1+ tchar) and SP, or still a prefix of a method, or half of an empty line's CRLF.
_REQUEST_START_RE = re.compile(
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+ |[!#$%&'*+\-.^_`|~0-9A-Za-z]*\Z|\r\Z)")
# Name and raw value only: trimming OWS with the regex itself (``[ \t]*(.*?)[ \t]*``) backtracks
# quadratically on a value full of spaces (seconds of CPU for one 30 KB header).
_FIELD_RE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):(.*)", re.DOTALL)
_BAD_VALUE_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# The same two rules over a whole header section at once (each line CRLF-terminated): one regex
# pass instead of two per line. It cannot backtrack: names exclude ':' and values exclude CR/LF.
_FIELDS_OK_RE = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTENT_LENGTH_RE = re.compile(r"[0-9]+")
_REQUEST_ID_SCAN_RE = re.compile(rb"(?im)^x-request-id:[ \t]*([A-Za-z0-9._:-]{1,128})[ \t]*\r?$")
MAX_QUERY_FIELDS = 100
# Vault reads every body as JSON whatever its Content-Type (only a form body that does not start
# with "{" is a form): its Go API client (SOPS, Go services) sends none, and the curl examples of
# its documentation send curl's default, application/x-www-form-urlencoded. Under this prefix
# (api/transit) a body is taken as JSON whatever type it declares; one that is not JSON is a 400.
# (/v1/auth/ is Vault's only: its Go client writes there with no type either.)
UNTYPED_JSON_PREFIX = ("/v1/transit/", "/v1/auth/")
# The one Vault path with a trailing slash that its tools send (`vault list transit/keys`, the Go
# client's List): read as the path without it, where every other path ending in "/" is a 404.
VAULT_LISTING = "/v1/transit/keys/"
# Every 413 names the way out: large data is signed by its digest, encrypted under a data key.
TOO_LARGE_HINT = ("; sign or verify large data by its digest (the \"digest\" member; "
                  "`ferrohsm sign` sends one by default) and encrypt large data locally under a "
                  "data key protected with wrap")

# Response side: headers the server owns (an application value would break framing).
_SERVER_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "x-request-id",
     "strict-transport-security", "x-content-type-options"}
)
# Every answer goes over TLS (the server has no plain-text mode), errors and dashboard files
# included: browsers then refuse to be downgraded to http:// for this host for a year. And no
# answer is content-sniffed: a JSON error holding a caller's text is never read as a page.
HSTS = "Strict-Transport-Security: max-age=31536000\r\nX-Content-Type-Options: nosniff"
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
    chunked: bool = False


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


def check_request_start(buf: bytes | bytearray) -> None:
    """400 at once for bytes (leading empty lines skipped) that cannot begin a request line:
    binary junk (a TLS record inside TLS, a stray protocol) would otherwise hold the slot until
    the header timeout and be answered 408. Called only while a head is incomplete."""
    if _REQUEST_START_RE.match(buf) is None:
        raise BadRequest("the request does not start with a request line (a method, then a "
                         "space)")


def scan_request_line(raw: bytes | bytearray) -> tuple[str, str]:
    """The method and path of a head we refused, each when it is valid ("" otherwise): the
    error must still take the shape of the API it was sent to (Vault's under /v1/transit/),
    and its access line and metrics name the method, though the refusal came from a header
    (415, 413, a bad field), the version (505) or the target itself."""
    line = bytes(raw).split(b"\r\n", 1)[0]
    try:
        method, target, _ = _parse_request_line(line)
    except FerroError:  # each part that is valid alone: a bad target still names its method
        parts = line.split(b" ")
        method = parts[0].decode("ascii") if len(parts) > 1 and _METHOD_RE.fullmatch(
            parts[0]) else ""
        try:
            target = _origin_form(parts[1]) if len(parts) == 3 else ""
        except FerroError:
            target = ""
    return method, target.partition("?")[0]


def parse_head(head: bytes, limits: Limits) -> RequestHead:
    """Validate a complete head (without its final CRLFCRLF) and derive the framing."""
    lines = head.split(b"\r\n")
    method, target, version = _parse_request_line(lines[0])
    if len(lines) - 1 > limits.max_headers:
        raise HeaderFieldsTooLarge(f"more than {limits.max_headers} header fields")
    headers = Headers(_parse_fields(head, lines))
    path, _, query_string = target.partition("?")
    untyped = path.startswith(UNTYPED_JSON_PREFIX)
    if untyped and path == VAULT_LISTING:
        path = path[:-1]
    try:
        _check_host(headers, version)
        chunked = _chunked(headers, version, untyped)
        content_length = 0 if chunked else _content_length(headers, limits, untyped)
        expect_continue = _expect_continue(headers) and version == "HTTP/1.1"
    except FerroError as exc:  # the head parsed: its refusal is its caller's (the token, ids)
        exc.partial_head = RequestHead(  # type: ignore[attr-defined]
            method=method, target=target, path=path, query_string=query_string,
            version=version, headers=headers, content_length=0, keep_alive=False,
            expect_continue=False, chunked=False)
        raise
    return RequestHead(
        method=method,
        target=target,
        path=path,
        query_string=query_string,
        version=version,
        headers=headers,
        content_length=content_length,
        keep_alive=_keep_alive(headers, version),
        expect_continue=expect_continue,
        chunked=chunked,
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
    if _TARGET_RE.fullmatch(target):  # the common case: origin-form
        return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")
    return method.decode("ascii"), _origin_form(target), version.decode("ascii")


def _origin_form(target: bytes) -> str:
    """The target as origin-form (``/path?query``): as sent, or from an absolute-form URI
    (RFC 9112 3.2.2), whose empty path is ``/``. Nothing is decoded (router.py)."""
    if _TARGET_RE.fullmatch(target):
        return target.decode("ascii")
    if target == b"*":
        raise BadRequest("asterisk-form request target is not supported")
    absolute = _ABSOLUTE_RE.fullmatch(target)
    origin = (absolute.group(1) or b"/") if absolute else b""
    if origin[:1] == b"?":
        origin = b"/" + origin
    if not _TARGET_RE.fullmatch(origin):
        raise BadRequest("request target must be origin-form, or absolute-form with http or "
                         "https, without invalid characters")
    return origin.decode("ascii")


def _parse_fields(head: bytes, lines: list[bytes]) -> list[tuple[str, str]]:
    """Every header field; the whole section is checked in one pass, and only a section that
    fails it is parsed line by line (to say precisely what is wrong)."""
    if len(lines) == 1:
        return []
    if _FIELDS_OK_RE.fullmatch(head[len(lines[0]) + 2:] + b"\r\n") is None:
        return [_parse_field(line) for line in lines[1:]]
    fields = []
    for line in head[len(lines[0]) + 2:].decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")  # names are tokens: ASCII, as decoded
        fields.append((name, value.strip(" \t")))
    return fields


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
    count = len(headers.values_of("host"))
    if count > 1:
        raise BadRequest("more than one Host header")
    if count == 0 and version == "HTTP/1.1":
        raise BadRequest("HTTP/1.1 request without a Host header")


_PLAIN_JSON = ["application/json"]


def _check_body_type(headers: Headers, untyped: bool) -> None:
    """A body must be JSON in UTF-8, sent as is: declared so, or (where ``untyped`` allows it)
    declared as anything or not at all. Two Content-Types are ambiguous (400); another media type, another
    charset or a content coding is refused (415) rather than read as something it is not."""
    types = headers.values_of("content-type")
    if types == _PLAIN_JSON:  # the common case
        pass
    elif len(types) > 1:
        raise BadRequest("more than one Content-Type header")
    elif not types:
        if not untyped:
            raise UnsupportedMediaType("request bodies must be application/json")
    elif not untyped and not _is_json(types[0]):
        raise UnsupportedMediaType("request bodies must be application/json")
    elif _charset(types[0]) not in (None, "utf-8", "utf8"):
        raise UnsupportedMediaType("request bodies must be UTF-8 JSON (charset=utf-8)")
    if "content-encoding" not in headers:
        return
    codings = [c.strip().lower() for v in headers.values_of("content-encoding")
               for c in v.split(",") if c.strip()]
    if any(c != "identity" for c in codings):
        raise UnsupportedMediaType("a Content-Encoding is not accepted: send the JSON body "
                                   "uncompressed")


def _charset(content_type: str) -> str | None:
    """The charset parameter of a media type, lower-cased and unquoted (None: not given)."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def _chunked(headers: Headers, version: str, untyped: bool = False) -> bool:
    """Whether the body is chunked: one ``Transfer-Encoding: chunked`` exactly, nothing else."""
    codings = headers.values_of("transfer-encoding")
    if not codings:
        return False
    if headers.values_of("content-length"):
        raise BadRequest("Content-Length and Transfer-Encoding together are not accepted")
    if version != "HTTP/1.1":
        raise BadRequest("Transfer-Encoding is not accepted in HTTP/1.0")
    if len(codings) != 1 or codings[0] != "chunked":
        raise BadRequest("the only Transfer-Encoding accepted is exactly 'chunked'")
    _check_body_type(headers, untyped)
    return True


def _content_length(headers: Headers, limits: Limits, untyped: bool = False) -> int:
    """Body length from the single, strictly formatted Content-Length."""
    values = headers.values_of("content-length")
    if not values:
        return 0
    if len(values) > 1:
        raise BadRequest("more than one Content-Length header")
    if not _CONTENT_LENGTH_RE.fullmatch(values[0]):
        raise BadRequest("malformed Content-Length")
    # a number too long to hold a sane length is too large, not malformed (no int of 10**6 digits)
    length = int(values[0]) if len(values[0]) <= 18 else limits.max_body + 1
    if length > limits.max_body:
        raise PayloadTooLarge(f"request body larger than {limits.max_body} bytes{TOO_LARGE_HINT}")
    if length:
        _check_body_type(headers, untyped)
    return length


_CHUNK_SIZE_RE = re.compile(rb"[0-9A-Fa-f]{1,8}")
_SIZE_LINE_MAX = 8 + 2  # eight hex digits and CRLF: a longer size line is refused at once
SIZE, DATA, DATA_END, LAST_END, DONE = range(5)


class ChunkedBody:
    """Incremental, strict decoder of one chunked request body (RFC 9112 section 7.1).

    ``feed(buf)`` consumes what it can from the front of ``buf`` (the connection's buffer) and
    returns True once the body is complete; what follows it (a pipelined request) stays in
    ``buf``. Each byte is looked at once, however the body is split across reads.

    Accepted: ``1*8HEXDIG CRLF`` size lines, data followed by exactly CRLF, the last chunk
    ``0`` (any number of zeros up to eight digits) and then exactly CRLF. Refused with 400: a
    chunk extension (``;name=value``, even a valid one), a sign, ``0x``, whitespace, more than
    eight digits, a bare LF or CR, data not followed by CRLF, any trailer field. 413 as soon
    as a size line would take the decoded total past ``max_body``.
    """

    __slots__ = ("body", "max_body", "remaining", "state")

    def __init__(self, max_body: int) -> None:
        self.body = bytearray()
        self.max_body = max_body
        self.remaining = 0
        self.state = SIZE

    def feed(self, buf: bytearray) -> bool:
        while self.state != DONE:
            if self.state == DATA:
                take = min(self.remaining, len(buf))
                self.body += buf[:take]
                del buf[:take]
                self.remaining -= take
                if self.remaining:
                    return False
                self.state = DATA_END
            elif not self._line(buf):
                return False
        return True

    def _line(self, buf: bytearray) -> bool:
        """One CRLF-terminated line of the SIZE, DATA_END or LAST_END states; False: wait."""
        end = buf.find(b"\r\n", 0, _SIZE_LINE_MAX)
        if end < 0:
            if len(buf) >= _SIZE_LINE_MAX or (self.state != SIZE and len(buf) >= 2):
                raise BadRequest(self._malformed())
            if b"\n" in buf or b"\r" in buf[:-1]:
                raise BadRequest("bare CR or LF in a chunked body; lines must end with CRLF")
            return False
        line = bytes(buf[:end])
        del buf[:end + 2]
        if self.state == SIZE:
            self._size(line)
        elif line:
            raise BadRequest(self._malformed())
        else:
            self.state = DONE if self.state == LAST_END else SIZE
        return True

    def _size(self, line: bytes) -> None:
        if not _CHUNK_SIZE_RE.fullmatch(line):
            if b";" in line:
                raise BadRequest("chunk extensions are not accepted")
            raise BadRequest("malformed chunk size (1 to 8 hex digits, nothing else)")
        size = int(line, 16)
        if len(self.body) + size > self.max_body:
            raise PayloadTooLarge(f"request body larger than {self.max_body} bytes"
                                  f"{TOO_LARGE_HINT}")
        self.remaining = size
        self.state = DATA if size else LAST_END

    def _malformed(self) -> str:
        if self.state == SIZE:
            return "malformed chunk size line (1 to 8 hex digits and CRLF)"
        if self.state == DATA_END:
            return "chunk data must be followed by CRLF"
        return "trailer fields are not accepted after a chunked body"


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    return content_type.partition(";")[0].strip().lower() == "application/json"


def _keep_alive(headers: Headers, version: str) -> bool:
    """HTTP/1.1 persists unless ``close``; HTTP/1.0 only with an explicit ``keep-alive``."""
    values = headers.values_of("connection")
    if not values:
        return version == "HTTP/1.1"
    tokens = {token.strip().lower() for value in values for token in value.split(",")}
    if version == "HTTP/1.1":
        return "close" not in tokens
    return "keep-alive" in tokens and "close" not in tokens


def _expect_continue(headers: Headers) -> bool:
    values = headers.values_of("expect")
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
    lines.append(HSTS)
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


def build_request(head: RequestHead, body: bytes, peer: tuple[str, int],
                  client_cert_der: bytes | None, received_at: float) -> Request:
    """The application's view of a fully read request."""
    return Request(
        method=head.method,
        target=head.target,
        path=head.path,
        query=parse_query(head.query_string),
        headers=head.headers,
        body=body,
        peer_ip=peer[0],
        peer_port=peer[1],
        client_cert_der=client_cert_der,
        request_id=pick_request_id(head.headers.get("x-request-id")),
        received_at=received_at,
        http_version=head.version,
    )


def bare_request(head: RequestHead | None, raw: bytes | bytearray, peer: tuple[str, int],
                 client_cert_der: bytes | None, received_at: float) -> Request:
    """What we know of a request refused before the app (for error bodies and access logs):
    its head if that parsed, and the client's X-Request-ID if one can be found in ``raw``."""
    method, path = (head.method, head.path) if head else scan_request_line(raw)
    return Request(
        method=method,
        target=head.target if head else "",
        path=path,
        query={},
        headers=head.headers if head else Headers(),
        body=b"",
        peer_ip=peer[0],
        peer_port=peer[1],
        client_cert_der=client_cert_der,
        request_id=pick_request_id(head.headers.get("x-request-id") if head
                                   else scan_request_id(raw)),
        received_at=received_at,
        http_version=head.version if head else "HTTP/1.1",
    )
