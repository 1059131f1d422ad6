"""HardenedHTTPServer: HTTP/1.1 over TLS 1.3 on one event loop, with a worker pool for slow work.

Theory of operation (bench/RESULTS.md has the measurements):

- ONE loop thread owns every socket: it accepts, runs TLS handshakes and reads without blocking
  (selectors/epoll), parses strictly (parse.py) and writes each response as one buffer on a
  TCP_NODELAY socket. A thread per connection spent more CPU on GIL hand-offs and wake-ups than
  the requests themselves cost; one thread switching between ready sockets does not.
- Each turn of the loop collects every request that became complete and runs the cheap ones
  (``inline(request)`` is True: crypto operations, health) right there, one after another. Each
  such request carries a list for the audit tickets of its records (``Request.tickets``); the
  records are written as ONE group at the end of the turn and flushed by ONE fsync (io_uring or
  a thread: flusher.py) while the loop goes on; a response is sent only once its request's
  tickets are durable (dispatch.py), else a 503: nothing is acknowledged unaudited.
- Everything else (key management, listings, approvals, an app without ``inline``) runs on a
  bounded worker pool, so a slow handler (RSA key generation, a long listing) never stalls the
  loop; its audit records are durable before it returns, as always. A connection has at most one
  request in progress; pipelined requests wait in its buffer, so answers keep their order.
- Limits: at most ``max_connections`` accepted connections, per source address fewer, and a
  share kept for authenticated peers (admission.py). At the cap a new client takes the place of
  an unproductive connection as it arrives; an idle keep-alive or a very young connection gives
  way only at the backlog poll (ten a second); with none to give way the listener pauses and the
  next response carries ``Connection: close``, so a queued client is served within about a
  request time.
- Deadlines per connection (connection.py): handshake, head, body, idle, sending, lingering. A
  silent or dribbling peer costs a slot, never the loop; plain HTTP gets a plain-text 400.
- ``shutdown(grace)`` stops accepting, closes idle connections, lets requests in progress finish
  in ``grace`` (answered with ``Connection: close``), closes the rest, joins every thread.

The application gets a ``Request`` and returns a ``Response``; a ``FerroError`` it raises becomes
``error_response``, anything else a generic 500 (traceback logged with the request id, never sent).
A request refused while it was read (framing, limits, timeouts) gets ``error_response``, or
``on_refused(request, error)``'s answer through the dispatcher (it may record the refusal first).
The server adds Content-Length, Date, Connection and X-Request-ID, and drops HEAD responses' bodies.
"""

from __future__ import annotations

import logging
import selectors
import signal
import socket
import ssl
import threading
import time
import types
from collections.abc import Callable
from typing import Any

from .admission import Admission
from .connection import (
    BODY,
    BUSY,
    CLOSED,
    HANDSHAKE,
    HEAD,
    IDLE,
    LINGER,
    NEVER,
    WRITING,
    Conn,
    Incoming,
    PeerGone,
    answer_plain_http,
    hurry_arriving,
)
from .dispatch import App, Dispatcher, Refuse, Turn, rendered
from .flusher import DEFAULT_FLUSH, Durability, FlushPlan
from .http import Request, Response, error_response
from .listener import Listener, Waker
from .parse import Limits
from .spread import Member
from .tlsfail import HandshakeFailures

OnRequest = Callable[[Request, Response, float], None]
_MAX_WAIT, ACTIVE_WINDOW = 1.0, 0.001  # ACTIVE_WINDOW: after an answer, a connection is active
_RECV_SIZE, _LISTENER, _WAKE, _FLUSHED = 65536, object(), object(), object()
_ACCEPTS_PER_TURN = 256
# drained after a final answer, so that a 413's client still sending reads it: 16 bodies, at least
LINGER_BODIES, LINGER_AT_LEAST = 16, 32 << 20  # Vault's limit (hvac sends it all, then reads)
DRAIN_READ_SECONDS = 1.0  # at shutdown: time left to a request still arriving


class HardenedHTTPServer:
    """HTTP/1.1 server with TLS 1.3, strict framing, deadlines and a bounded connection count."""

    def __init__(
        self, app: App, *, host: str, port: int,
        ssl_context_provider: Callable[[], ssl.SSLContext] | None, max_connections: int = 64,
        admission: Admission | None = None, handshake_timeout: float = 10,
        header_timeout: float = 10, body_timeout: float = 30, idle_timeout: float = 60,
        max_body: int = 1 << 20, max_request_line: int = 8192, max_header_bytes: int = 32768,
        max_headers: int = 100, logger: logging.Logger | None = None,
        on_request: OnRequest | None = None, backlog: int = 128, reuse_port: bool = False,
        spread: Member | None = None,  # processes = N: connections spread evenly (spread.py)
        linger_timeout: float = 1.0, workers: int = 16,
        inline: Callable[[Request], bool] | None = None, audit: Durability | None = None,
        on_refused: Refuse | None = None, turn: Turn | None = None,
        flush: FlushPlan = DEFAULT_FLUSH, after_turn: Callable[[], None] | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.host, self.port = host, port
        self.ssl_context_provider, self.max_connections = ssl_context_provider, max_connections
        self.admission = admission or Admission(max_connections, None, None, 0.0)
        self.handshake_timeout, self.header_timeout, self.body_timeout, self.idle_timeout = (
            handshake_timeout, header_timeout, body_timeout, idle_timeout)
        self.limits = Limits(max_request_line, max_header_bytes, max_headers, max_body)
        # Per connection: one request's worth of pipelined bytes, then reading pauses.
        self._buffer_cap = max_header_bytes + max_request_line + max_body + 4
        self.log, self.on_request = logger or logging.getLogger("ferrohsm.http"), on_request
        self.backlog, self.reuse_port, self.spread, self.linger_timeout = (
            backlog, reuse_port, spread, linger_timeout)
        self.handshake_failures = HandshakeFailures(self.log, lambda: self.app)
        self._after_turn = after_turn  # the app's end-of-turn work (its access lines)
        self._dispatcher = Dispatcher(app, inline=inline, audit=audit, workers=workers,
                                      log=self.log, wake=self._wake, refuse=on_refused, turn=turn,
                                      flush=flush)
        self._listener: Listener | None = None
        self._address: tuple[str, int] | None = None
        self._selector: selectors.BaseSelector | None = None
        self._waker: Waker | None = None
        self._conns: dict[Conn, None] = {}
        self._ready: list[Conn] = []          # buffered bytes to parse without waiting
        self._chunk = memoryview(bytearray(_RECV_SIZE))
        self._evict_next = 0
        self._stopping = threading.Event()
        self._draining = False
        self._drain_deadline = NEVER
        self._drain_read_by = NEVER  # draining: when requests still arriving get their 408
        self._grace = 10.0
        self._running = False
        self._loop_thread: threading.Thread | None = None
        self._shutdown_lock = threading.Lock()
        self._closed = threading.Event()

    # ----------------------------------------------------------------- lifecycle

    @property
    def app(self) -> App:
        return self._dispatcher.app

    @app.setter
    def app(self, app: App) -> None:
        self._dispatcher.app = app

    @property
    def server_address(self) -> tuple[str, int]:
        """The bound (host, port); with port 0 this is where the kernel put us."""
        if self._address is None:
            raise RuntimeError("server is not bound; call start() first")
        return self._address

    def start(self) -> None:
        """Bind, listen and run the loop in a background thread; returns once listening."""
        self._bind()
        self._running = True
        self._loop_thread = threading.Thread(target=self._loop, name="ferrohsm-loop",
                                             daemon=True)
        self._loop_thread.start()

    def serve_forever(self) -> None:
        """Blocking variant of start(): returns after shutdown() (or a signal) has completed."""
        if self._listener is None:
            self._bind()
        self._running = True
        self._loop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until shutdown has completed; True if it did within ``timeout``."""
        return self._closed.wait(timeout)

    def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting, let requests in progress finish within ``grace``, join every thread."""
        if not self._shutdown_lock.acquire(blocking=False):
            self._closed.wait()
            return
        try:
            if self._closed.is_set():
                return
            self._grace = grace
            self._stopping.set()
            self._wake()
            if self._loop_thread is not None:
                self._loop_thread.join()
            elif self._running:
                self._closed.wait()
            else:
                self._cleanup()
        finally:
            self._shutdown_lock.release()

    def install_signal_handlers(self, grace: float = 10.0) -> None:
        """SIGTERM/SIGINT start a graceful shutdown (main thread only). The handler only spawns a
        thread: waiting for the loop in it would deadlock when serve_forever() runs there."""
        def handle(signum: int, frame: types.FrameType | None) -> None:
            self.log.info("signal %d received: shutting down (grace %.1fs)", signum, grace)
            threading.Thread(target=self.shutdown, args=(grace,), name="ferrohsm-shutdown").start()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _bind(self) -> None:
        if self._stopping.is_set():
            raise RuntimeError("this server was shut down; create a new one")
        self._selector = selectors.DefaultSelector()
        self._listener = Listener(self.host, self.port, self.backlog, self.reuse_port,
                                  self._selector, _LISTENER, self.spread)
        self._address = self._listener.address
        self._waker = Waker(self._selector, _WAKE)
        self._dispatcher.attach(self._selector, _FLUSHED)

    def _wake(self) -> None:
        """Interrupt the loop's select (from any thread)."""
        if self._waker is not None:
            self._waker.wake()

    # ----------------------------------------------------------------- the loop
    def _loop(self) -> None:
        try:
            while not self._finished():
                self._turn()
        except Exception:  # a bug here must not leave a half-dead server: close everything
            self.log.exception("event loop failed; closing every connection")
        finally:
            self._cleanup()

    def _finished(self) -> bool:
        if self._stopping.is_set() and not self._draining:
            self._begin_drain()
        if not self._draining:
            return False
        busy = self._ready or self._dispatcher.busy()
        return (not self._conns and not busy) or time.monotonic() >= self._drain_deadline

    def _turn(self) -> None:
        """One select, then everything that became ready, in a fixed order."""
        assert self._selector is not None  # noqa: S101  type narrowing
        timeout = self._wait_time()
        now = time.monotonic()
        self._dispatcher.hand_over(self._in_progress, now)
        for key, _ in self._selector.select(timeout):
            try:
                self._event(key.data)
            except Exception:
                self._fail(key.data)
        now = time.monotonic()
        if self._listener is not None and self._listener.queued(now):
            self._accept(now, polled=True)
        while self._ready:
            conns, self._ready = self._ready, []
            for conn in conns:
                self._guarded(conn, self._parse, conn, now)
        for conn, incoming, response in self._dispatcher.answers():
            self._guarded(conn, self._respond, conn, incoming, response)
        now = time.monotonic()
        self._dispatcher.hand_over(self._in_progress, now)
        if (after := self._after_turn) is not None:
            try:
                after()
            except Exception:  # the app's bookkeeping must never end the loop
                self.log.exception("end-of-turn callback failed")
        self._expire(time.monotonic())

    def _in_progress(self) -> int:
        """Connections with a request under way (read, run, held or written), or answered so
        recently (ACTIVE_WINDOW) that their next request is probably on its way: the dispatcher
        holds audit flushes until most of these wait on them."""
        recent = time.monotonic() - ACTIVE_WINDOW
        return sum(1 for conn in self._conns
                   if HEAD <= conn.state <= WRITING
                   or (conn.state == IDLE and not conn.first and conn.idle_since >= recent))

    def _wait_time(self) -> float:
        if self._ready or self._dispatcher.has_work() or self._dispatcher.spinning():
            return 0.0
        now = time.monotonic()
        soonest = min((conn.deadline for conn in self._conns), default=NEVER)
        if self._listener is not None and self._listener.paused and not self._draining:
            soonest = min(soonest, self._listener.next_check)
        if self._draining:
            soonest = min(soonest, self._drain_deadline)
        hold = self._dispatcher.hold_deadline()
        if hold is not None:
            soonest = min(soonest, hold)
        return max(0.0, min(soonest - now, _MAX_WAIT))

    def _event(self, data: Any) -> None:
        if data is _LISTENER:
            self._accept(time.monotonic())
        elif data is _FLUSHED:
            self._dispatcher.flushed()
        elif data is _WAKE:
            assert self._waker is not None  # noqa: S101  type narrowing
            self._waker.drain()
        else:
            self._conn_event(data)

    def _guarded(self, conn: Conn, step: Callable[..., None], *args: Any) -> None:
        try:
            step(*args)
        except Exception:
            self._fail(conn)

    def _fail(self, data: Any) -> None:
        """A bug while serving one connection costs that connection, never the loop."""
        if isinstance(data, Conn):
            self.log.exception("connection from %s failed", data.peer[0])
            self._close(data)
        else:
            self.log.exception("event loop error")
            time.sleep(0.05)  # e.g. EMFILE on accept: do not spin

    # ----------------------------------------------------------------- accepting

    def _accept(self, now: float, polled: bool = False) -> None:
        assert self._listener is not None  # noqa: S101  type narrowing
        budget = _ACCEPTS_PER_TURN  # a flood that is turned away must not hold the loop
        while not self._draining and budget and self._room(now, polled):
            budget, polled = budget - 1, False
            try:
                sock, addr = self._listener.accept(len(self._conns))
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE and friends: pause, and let eviction free an fd
                self.log.warning("accept failed (%s): pausing new connections", exc.strerror)
                return self._listener.pause(now)
            admitted, trusted, victim = self.admission.admit(str(addr[0]), self._conns,
                                                             self.log, now)
            if victim is not None:
                self._close(victim)
            if admitted:
                self._adopt(sock, addr, now, trusted)
            else:
                self._listener.refuse(sock, len(self._conns))  # over a cap of admission.py

    def _adopt(self, sock: socket.socket, addr: tuple[Any, ...], now: float,
               trusted: bool = False) -> None:
        """A new connection: non-blocking, Nagle off, TLS wrapper, first deadline."""
        conn = Conn(sock, (str(addr[0]), int(addr[1])))
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context_provider is not None:
                tls = self.ssl_context_provider().wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False)
                conn.sock = conn.tls = tls
                conn.deadline = now + self.handshake_timeout
            else:
                self._to_idle(conn, now)
        except (OSError, ValueError) as exc:  # mostly a peer gone already: counted, not a line
            self.handshake_failures.failed(conn.peer[0], exc)  # each (a scanner's flood)
            conn.close()
            return
        self._conns[conn] = None
        self.admission.opened(conn, now, trusted)
        self._watch(conn, selectors.EVENT_READ)

    def _room(self, now: float, polled: bool) -> bool:
        """Below the cap, yes. At the cap, a client waiting in the backlog takes the place of
        an unproductive connection (admission.py) as it arrives: one a poll (ten a second) let
        a few addresses opening silent connections keep every slot and the backlog full. An
        idle keep-alive connection, a client's, and one too young to have sent its request
        give way only to the backlog poll (``polled``: one a poll, listener.py), so a flood
        cannot close them faster than that. With none to give way, the listener pauses and the
        next response closes its connection."""
        assert self._listener is not None  # noqa: S101  type narrowing
        if len(self._conns) < self.max_connections:
            return True
        if not self._listener.waiting():
            return False
        victim = self.admission.victim(self._conns, anonymous_only=False,
                                       now=None if polled else now, idle=polled)
        if victim is None:
            self._evict_next = 1
            self._listener.pause(now)
            return False
        self._close(victim)
        return True

    # ----------------------------------------------------------------- reading

    def _conn_event(self, conn: Conn) -> None:
        now = time.monotonic()
        state = conn.state
        if state == HANDSHAKE:
            self._handshake(conn, now)
        elif state == WRITING:
            self._send(conn, now)
        elif state == LINGER:
            self._drain_linger(conn)
        elif state != CLOSED:
            self._read(conn, now)

    def _handshake(self, conn: Conn, now: float) -> None:
        tls = conn.tls
        assert tls is not None  # noqa: S101  narrows a type for mypy, not a runtime check
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            return self._watch(conn, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            return self._watch(conn, selectors.EVENT_WRITE)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.handshake_failures.failed(conn.peer[0], exc)
            answer_plain_http(tls, exc)  # plain HTTP to this port: told so, in plain HTTP
            conn.linger_refused(now + self.linger_timeout)
            return self._watch(conn, selectors.EVENT_READ)
        if tls.version() != "TLSv1.3":  # defence in depth: the provider's context was too lax
            self.handshake_failures.failed(conn.peer[0], None, tls.version())
            return self._close(conn)
        conn.client_cert_der = tls.getpeercert(binary_form=True)
        self._to_idle(conn, now)
        self._watch(conn, selectors.EVENT_READ)
        self._read(conn, now)  # the first request may have come with the handshake's end

    def _read(self, conn: Conn, now: float) -> None:
        cap = self._buffer_cap
        if len(conn.buf) >= cap:  # enough buffered: read again once some of it is consumed
            return self._watch(conn, 0)
        try:
            conn.receive(self._chunk, cap)
        except PeerGone:
            return self._close(conn)
        self._parse(conn, now)
        if conn.state == BUSY and (conn.eof or len(conn.buf) >= cap):
            self._watch(conn, 0)  # nothing more to read until the response is out

    def _parse(self, conn: Conn, now: float) -> None:
        """The next request in ``conn``'s buffer, if complete: to the dispatcher (or answered at
        once when it is a framing error). A peer that left without completing one is closed."""
        if conn.state not in (IDLE, HEAD, BODY):
            return
        incoming = conn.next_request(self.limits, now, self.header_timeout, self.body_timeout)
        if conn.out is not None:  # 100 Continue
            self._send(conn, now)
        if incoming is None:
            if conn.eof and conn.state != CLOSED:
                self._close(conn)  # the peer left in the middle of (or before) a request
        elif incoming.error is not None and self._dispatcher.refuse is None:
            self._respond(conn, incoming, error_response(incoming.error,
                                                         incoming.request.request_id))
        else:
            self._dispatcher.take(conn, incoming)

    def _drain_linger(self, conn: Conn) -> None:
        """Discard what the peer still sends after our answer (see LINGER_BODIES)."""
        try:
            received = conn.discard_raw(self._chunk) if conn.raw else \
                conn.receive(self._chunk, len(self._chunk))
        except PeerGone:
            return self._close(conn)
        del conn.buf[:]
        conn.drained += received
        if conn.eof or conn.drained > max(LINGER_BODIES * self.limits.max_body, LINGER_AT_LEAST):
            self._close(conn)

    # ----------------------------------------------------------------- writing

    def _respond(self, conn: Conn, incoming: Incoming, response: Response) -> None:
        if conn.state == CLOSED:  # forced closed when a shutdown's grace ended: not sent,
            return self._report(incoming.request, response)  # but logged and counted
        request = incoming.request
        if not conn.productive and incoming.error is None:
            self.admission.productive(conn)
        if request.authenticated and not conn.trusted:
            self.admission.trust(conn)
        keep_alive = (incoming.error is None and incoming.keep_alive and not response.close
                      and not (conn.eof and not conn.buf) and not self._stopping.is_set()
                      and not self._take_eviction())
        payload, response = rendered(self.log, request, response, keep_alive,
                                     incoming.http10_keep_alive)
        conn.keep_alive = keep_alive
        self._report(request, response)  # first: its access line is queued before it is seen
        self._write(conn, payload)

    def _take_eviction(self) -> bool:
        evict, self._evict_next = bool(self._evict_next), 0
        return evict

    def _write(self, conn: Conn, payload: bytes) -> None:
        """Queue one response (one buffer, so one TLS record train and no Nagle stall) and send
        as much of it as the socket takes now."""
        conn.queue(payload)
        conn.state = WRITING
        self._send(conn, time.monotonic())

    def _send(self, conn: Conn, now: float) -> None:
        try:
            done = conn.flush()
        except PeerGone:
            return self._close(conn)
        if not done:
            if conn.deadline == NEVER or conn.state != WRITING:
                conn.deadline, conn.write_since = now + self.body_timeout, now
            return self._watch(conn, selectors.EVENT_WRITE)
        if conn.state == WRITING:
            self._after_response(conn, now)
        else:
            self._watch(conn, selectors.EVENT_READ)  # a 100 Continue left; read the body

    def _after_response(self, conn: Conn, now: float) -> None:
        if not conn.keep_alive:
            conn.half_close()
            conn.state, conn.deadline = LINGER, now + self.linger_timeout
            del conn.buf[:]
            return self._watch(conn, selectors.EVENT_READ)
        if self._draining:
            return self._close(conn)
        conn.first = False
        self._to_idle(conn, now)
        if not conn.eof and len(conn.buf) < self._buffer_cap:
            self._watch(conn, selectors.EVENT_READ)
        if conn.buf or conn.eof:
            self._ready.append(conn)  # pipelined requests (or the peer's EOF) next turn

    def _to_idle(self, conn: Conn, now: float) -> None:
        conn.state, conn.idle_since = IDLE, now
        conn.deadline = now + (self.header_timeout if conn.first else self.idle_timeout)

    def _report(self, request: Request, response: Response) -> None:
        if self.on_request is None:
            return
        try:
            self.on_request(request, response, time.monotonic() - request.received_at)
        except Exception:
            self.log.exception("on_request callback failed (request_id=%s)", request.request_id)

    # ----------------------------------------------------------------- deadlines and closing

    def _expire(self, now: float) -> None:
        if self._draining:
            hurry_arriving(self._conns, self._drain_read_by)
        for conn in [c for c in self._conns if c.deadline <= now]:
            if conn.state in (HEAD, BODY):  # a started request ran out of time: say so
                incoming = conn.timed_out(self.limits, now)
                assert incoming.error is not None  # noqa: S101  type narrowing
                if self._dispatcher.refuse is not None:
                    self._dispatcher.take(conn, incoming)  # recorded, then answered
                else:
                    self._guarded(conn, self._respond, conn, incoming,
                                  error_response(incoming.error, incoming.request.request_id))
            else:
                self._close(conn)

    def _watch(self, conn: Conn, events: int) -> None:
        """Point the selector at what ``conn`` waits for (0: nothing)."""
        if conn.events == events or self._selector is None:
            return
        if events == 0:
            self._selector.unregister(conn.sock)
        elif conn.events == 0:
            self._selector.register(conn.sock, events, conn)
        else:
            self._selector.modify(conn.sock, events, conn)
        conn.events = events

    def _close(self, conn: Conn) -> None:
        if conn.state == CLOSED:
            return
        self._watch(conn, 0)
        conn.close()
        if self._conns.pop(conn, 0) is None:  # it was ours: account for it
            self.admission.closed(conn)
        if self._listener is not None and not self._draining:
            self._listener.holding(len(self._conns), self.max_connections)

    def _begin_drain(self) -> None:
        """Shutdown: refuse new connections now, close idle ones, let the busy ones finish. A
        request still arriving gets DRAIN_READ_SECONDS more: peers dribbling request bodies
        held every restart for the whole grace period (an outside tester)."""
        now = time.monotonic()
        self._draining = True
        self._drain_deadline, self._drain_read_by = now + self._grace, now + DRAIN_READ_SECONDS
        if self._listener is not None:
            self._listener.close()
        for conn in list(self._conns):
            if conn.state in (HANDSHAKE, IDLE):
                self._close(conn)

    def _cleanup(self) -> None:
        """Close every socket, stop the pool (waiting a little for stuck handlers), done."""
        leftovers = [conn for conn in self._conns if conn.state not in (LINGER, CLOSED)]
        if leftovers and self._draining:
            self.log.warning("%d connection(s) still busy after %.1fs grace: closing them",
                             len(leftovers), self._grace)
        for conn in list(self._conns):
            self._close(conn)
        if self._listener is not None:
            self._listener.close()
        stuck = self._dispatcher.close(self.linger_timeout + 1.0)
        if stuck:
            self.log.warning("%d handler(s) still running at exit", len(stuck))
        if self._selector is not None:
            self._selector.close()
        if self._waker is not None:
            self._waker.close()
        self._closed.set()
