"""One connection of the event-loop server: its socket, buffers, state and deadline.

Everything here is non-blocking and runs on the loop thread only (server.py). A connection moves
through these states; ``deadline`` is the moment the loop closes it if it has not moved on:

    HANDSHAKE --> IDLE --first byte--> HEAD --head parsed--> BODY --complete--> BUSY
                   ^                                                              |
                   +---------------- response sent (keep-alive) <-- WRITING <-----+
                                     response sent (close) --> LINGER --> closed

- HANDSHAKE: TLS handshake under ``handshake_timeout`` (a silent peer costs nothing but a slot).
- IDLE: between requests; ``header_timeout`` before the first request, ``idle_timeout`` after.
- HEAD / BODY: the whole head within ``header_timeout`` of its first byte (of the handshake's end
  for a fresh connection), the whole body within ``body_timeout``: deadlines, not per-read
  timeouts, so a client dribbling a byte a second is still cut off.
- BUSY: the application has the request (no deadline: it is our own code).
- WRITING: the response is partly sent; the rest must leave within ``body_timeout``.
- LINGER: after a response that closes the connection: half-closed, unread input is drained for
  ``linger_timeout`` (closing with unread input makes the kernel send a RST that can destroy the
  response before the client read it).
"""

from __future__ import annotations

import math
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from ..domain.errors import FerroError, RequestTimeout
from .http import Request
from .parse import (
    ChunkedBody,
    Limits,
    RequestHead,
    bare_request,
    build_request,
    check_request_start,
    find_head_end,
    parse_head,
)

HANDSHAKE, IDLE, HEAD, BODY, BUSY, WRITING, LINGER, CLOSED = range(8)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
NEVER = math.inf


_PLAIN_BODY = b"This port speaks HTTPS (TLS 1.3 only): use an https:// URL.\n"
PLAIN_HTTP_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: " + str(len(_PLAIN_BODY)).encode() + b"\r\n"
                     b"Connection: close\r\n\r\n" + _PLAIN_BODY)


class PeerGone(Exception):
    """EOF, reset or a TLS failure: the connection is over, silently."""


def answer_plain_http(tls: ssl.SSLSocket, exc: Exception) -> bool:
    """A client that sent plain HTTP to this TLS port (OpenSSL saw a request line where a
    ClientHello belongs) is told so in plain HTTP, as nginx does, instead of a bare reset
    (``curl http://`` showed nothing). Best effort, never blocking: one write on the raw
    socket, the write side shut, the request's unread bytes drained so that closing does not
    reset the answer away. True when it answered."""
    if getattr(exc, "reason", None) != "HTTP_REQUEST":
        return False
    raw = socket.socket(fileno=tls.fileno())  # the same descriptor, past the TLS layer
    try:
        raw.send(PLAIN_HTTP_ANSWER)
        raw.shutdown(socket.SHUT_WR)
        for _ in range(16):  # at most 64 KiB of the request is read and dropped
            if not raw.recv(4096):
                break
    except OSError:  # would block, or the client left: the answer went or it did not
        pass
    finally:
        raw.detach()  # the descriptor stays the TLS socket's, closed with the connection
    return True


@dataclass(slots=True)
class Incoming:
    """A request read off the wire, or the framing error that stopped us reading it."""

    request: Request
    error: FerroError | None
    keep_alive: bool
    http10_keep_alive: bool


class Conn:
    """Socket, buffers and state of one accepted connection (loop thread only)."""

    __slots__ = ("accepted_at", "buf", "chunks", "client_cert_der", "deadline", "drained", "eof",
                 "events", "first", "head", "idle_since", "keep_alive", "out", "peer",
                 "productive", "raw", "received_at", "scan", "sock", "state", "tls", "trusted",
                 "write_since")

    def __init__(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        self.sock = sock
        self.tls: ssl.SSLSocket | None = None
        self.peer = peer
        self.client_cert_der: bytes | None = None
        self.buf = bytearray()
        self.out: memoryview | None = None
        self.state = HANDSHAKE
        self.deadline = NEVER
        self.first = True
        self.eof = False  # the peer half-closed: answer what it sent, then close
        self.keep_alive = True  # whether the response being written leaves the connection open
        self.idle_since = 0.0
        self.received_at = 0.0
        self.write_since = 0.0  # WRITING: when the response's send first had to wait
        self.head: RequestHead | None = None
        self.chunks: ChunkedBody | None = None  # the decoder of a chunked body being read
        self.scan = 0  # where to resume looking for the end of the head
        self.drained = 0  # LINGER: bytes discarded so far
        self.raw = False  # LINGER after a refused handshake: discarded below TLS (discard_raw)
        self.events = 0  # what the selector watches for (0: unregistered)
        # Admission accounting (server.py): when accepted; whether a first request was answered
        # (until then the connection is "unproductive"); whether it or its address authenticated.
        self.accepted_at = 0.0
        self.productive = False
        self.trusted = False

    # ---- reading ----------------------------------------------------------------------------

    def receive(self, chunk: memoryview, limit: int) -> int:
        """Move what the socket has into ``buf``, stopping once it holds ``limit`` bytes; the
        byte count (0: nothing yet). EOF sets ``eof`` (requests sent before it still get their
        answers); PeerGone on error."""
        total = 0
        sock = self.sock
        while len(self.buf) < limit:
            try:
                count = sock.recv_into(chunk)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return total
            except (OSError, ValueError):
                raise PeerGone from None
            if not count:
                self.eof = True
                return total
            self.buf += chunk[:count]
            total += count
            if count < len(chunk) and not (self.tls and self.tls.pending()):
                return total
        return total

    def linger_refused(self, deadline: float) -> None:
        """A refused handshake's alert (or plain-HTTP answer) is written: half-close, and
        drain below TLS until ``deadline`` (LINGER). Closed at once with the peer's request
        unread (a TLS 1.3 client sends it right after its Finished), the socket would be
        reset, and a reset can destroy the alert before the client reads it: it would see
        "connection ended" instead of "certificate required"."""
        self.half_close()
        self.raw, self.state, self.deadline = True, LINGER, deadline

    def discard_raw(self, chunk: memoryview) -> int:
        """After a refused handshake: read and drop what the peer still sends, below TLS (the
        TLS object is broken); the byte count. EOF sets ``eof``; PeerGone on error."""
        try:
            count = socket.socket.recv_into(self.sock, chunk)
        except BlockingIOError:
            return 0
        except (OSError, ValueError):
            raise PeerGone from None
        if not count:
            self.eof = True
        return count

    def next_request(self, limits: Limits, now: float, header_timeout: float,
                     body_timeout: float) -> Incoming | None:
        """The next complete request in ``buf``, a framing error, or None (need more bytes).

        Sets the HEAD/BODY deadlines as the request arrives; queues ``100 Continue`` when the
        client waits for it.
        """
        try:
            if self.head is None and not self._take_head(limits, now, header_timeout,
                                                         body_timeout):
                return None
            head = self.head
            assert head is not None  # noqa: S101  narrows a type for mypy, not a runtime check
            body = self._take_body(head)
            if body is None:
                return None
            request = build_request(head, body, self.peer, self.client_cert_der,
                                    self.received_at)
            self.head = None
        except FerroError as exc:  # self.head still set: a bad query string keeps its request id
            raw = bytes(self.buf[:limits.max_header_bytes])
            # a head refused for its framing (413, 415, Host) still names its caller and route
            head = self.head or getattr(exc, "partial_head", None)
            request = bare_request(head, raw, self.peer, self.client_cert_der,
                                   self.received_at or now)
            self.head, self.chunks = None, None
            self.state, self.deadline = BUSY, NEVER
            return Incoming(request, exc, False, False)
        self.state = BUSY
        self.deadline = NEVER
        http10 = head.keep_alive and head.version == "HTTP/1.0"
        return Incoming(request, None, head.keep_alive, http10)

    def _take_body(self, head: RequestHead) -> bytes | None:
        """The whole body once it is in (consumed from ``buf``), else None."""
        chunks = self.chunks
        if chunks is not None:
            if not chunks.feed(self.buf):
                return None
            self.chunks = None
            return bytes(chunks.body)
        if len(self.buf) < head.content_length:
            return None
        body = bytes(self.buf[:head.content_length])
        del self.buf[:head.content_length]
        return body

    def timed_out(self, limits: Limits, now: float) -> Incoming:
        """The request that ran out of time in HEAD or BODY, as a 408 to answer."""
        request = bare_request(self.head, bytes(self.buf[:limits.max_header_bytes]), self.peer,
                               self.client_cert_der, self.received_at or now)
        self.head, self.chunks = None, None
        self.state, self.deadline = BUSY, NEVER
        return Incoming(request, RequestTimeout("request not received in time"), False, False)

    def _take_head(self, limits: Limits, now: float, header_timeout: float,
                   body_timeout: float) -> bool:
        buf = self.buf
        while buf[:2] == b"\r\n":  # RFC 9112 2.2: ignore empty lines before a request
            del buf[:2]
            self.scan = 0
        if not buf:
            return False
        if self.state == IDLE:
            start = self.idle_since if self.first else now
            self.state, self.received_at = HEAD, now
            self.deadline = start + header_timeout
        end = find_head_end(buf, self.scan, limits)
        if end < 0:  # incomplete: junk that can never become a request line is refused now
            check_request_start(buf)
            self.scan = max(0, len(buf) - 3)
            return False
        raw = bytes(buf[:end])
        self.scan = 0
        head = parse_head(raw, limits)  # on error buf still holds the head for the request id
        del buf[:end + 4]
        self.head = head
        if head.chunked:
            self.chunks = ChunkedBody(limits.max_body)
            self.state, self.deadline = BODY, now + body_timeout
            if head.expect_continue and not buf:
                self.queue(CONTINUE)
        elif head.content_length:
            self.state, self.deadline = BODY, now + body_timeout
            if head.expect_continue and len(buf) < head.content_length:
                self.queue(CONTINUE)
        return True

    # ---- writing ----------------------------------------------------------------------------

    def queue(self, payload: bytes) -> None:
        """Add ``payload`` to what must be sent (before anything sent after it)."""
        if self.out is None or not len(self.out):
            self.out = memoryview(payload)
        else:
            self.out = memoryview(bytes(self.out) + payload)

    def flush(self) -> bool:
        """Send what is queued; True once all of it left. PeerGone on error."""
        out = self.out
        while out is not None and len(out):
            try:
                sent = self.sock.send(out)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                self.out = out
                return False
            except (OSError, ValueError):
                raise PeerGone from None
            out = out[sent:]
        self.out = None
        return True

    # ---- closing ----------------------------------------------------------------------------

    def half_close(self) -> None:
        """TCP half-close (``socket.socket.shutdown`` on purpose: SSLSocket.shutdown would drop
        the SSL object we still drain through)."""
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.state = CLOSED
        try:
            self.sock.close()
        except OSError:
            pass


def hurry_arriving(conns: Iterable[Conn], by: float) -> None:
    """Shutdown: a request still arriving has until ``by``, whatever deadline its head or body
    set since (then its 408): peers dribbling requests held every restart for the grace."""
    for conn in conns:
        if conn.state in (HEAD, BODY) and conn.deadline > by:
            conn.deadline = by
