"""HardenedHTTPServer: a small HTTP/1.1 (+TLS 1.3) server on stdlib sockets.

Theory of operation (see shared/PERF-NOTES.md for the measurements behind these choices):

- One accept thread. It takes a connection slot (a semaphore of ``max_connections``) BEFORE
  calling accept(), so extra connections wait in the kernel's listen backlog instead of being
  accepted and starved (no 503: answering one over TLS would need a handshake, i.e. a worker).
  While it waits for a slot and a connection is queued, it evicts one idle keep-alive connection
  (or asks the next busy one to close after its response), so a queued client is served within
  about one request time rather than after ``idle_timeout``, or never.
- One worker thread per connection, owning it for its keep-alive life: that is why the cap on
  connections equals the number of workers. The TLS handshake runs in the worker under
  ``handshake_timeout``, so a peer that connects and sends nothing stalls only its own worker.
- Deadlines, not per-read timeouts: the whole head must arrive within ``header_timeout`` and the
  whole body within ``body_timeout``, so a client dribbling one byte a second is cut off.
- Framing is checked strictly (parse.py) before the application runs; any framing error is
  answered with ``error_response`` and the connection is closed.
- Each response is serialized to ONE buffer and written with one ``sendall`` on a socket with
  TCP_NODELAY: split writes with Nagle on cost ~40 ms per request (delayed ACK).
- ``shutdown(grace)`` stops accepting, closes idle keep-alive connections at once, lets in-flight
  requests finish (their responses carry ``Connection: close``), and joins every worker.

The application gets a ``Request`` and returns a ``Response``; a ``FerroError`` it raises becomes
``error_response``, anything else a generic 500 (traceback logged with the request id, never sent).
The server adds Content-Length, Date, Connection and X-Request-ID, and drops the body of HEAD
responses (the router serves HEAD with the GET handler).
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

from ..errors import FerroError
from .http import Request, Response, error_response
from .parse import Conn, ConnectionIO, Limits, PeerGone, ReadResult, render_response

App = Callable[[Request], Response]
OnRequest = Callable[[Request, Response, float], None]
_INTERNAL_MESSAGE = "internal error; the server log has details under this request id"
_SLOT_POLL = 0.1


class ConnectionTable:
    """Which connections are idle (closable at once) and which are busy (finish first).

    A worker marks itself busy only after the first byte of a request arrived, under the same
    lock the closer takes, so a connection is never closed in the middle of a request it has
    started reading. (A request racing an idle close is lost, which RFC 9112 section 9.5 allows:
    clients retry requests on a keep-alive connection closed under them.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: dict[Conn, None] = {}
        self._closing = False
        self._evictions = 0

    def add(self, conn: Conn) -> bool:
        """Track ``conn``; False when the server is already closing (drop it)."""
        with self._lock:
            self._conns[conn] = None
            return not self._closing

    def remove(self, conn: Conn) -> None:
        with self._lock:
            self._conns.pop(conn, None)

    def wrap(self, conn: Conn, context: ssl.SSLContext) -> ssl.SSLSocket:
        """Swap the plain socket for its TLS wrapper without racing ``kill``."""
        with self._lock:
            if conn.evicted:
                raise PeerGone
            tls = context.wrap_socket(conn.sock, server_side=True,
                                      do_handshake_on_connect=False)
            conn.sock = tls
            return tls

    def set_idle(self, conn: Conn) -> bool:
        """Mark ``conn`` idle; False if the server is closing (the worker should exit)."""
        with self._lock:
            if self._closing or conn.evicted:
                return False
            conn.idle, conn.idle_since = True, time.monotonic()
            return True

    def set_busy(self, conn: Conn) -> bool:
        with self._lock:
            if conn.evicted:
                return False
            conn.idle = False
            return True

    def close_idle(self) -> None:
        """Shutdown: close idle connections now; busy ones close after their response."""
        with self._lock:
            self._closing = True
            for conn in self._conns:
                if conn.idle:
                    conn.evicted = True
                    conn.kill()

    def close_all(self) -> None:
        with self._lock:
            self._closing = True
            for conn in self._conns:
                conn.evicted = True
                conn.kill()

    def evict_one(self) -> None:
        """A connection is queued: free a slot by closing the longest-idle connection, or, when
        none is idle, by asking the next busy one to close after its response."""
        with self._lock:
            idle = [conn for conn in self._conns if conn.idle and not conn.evicted]
            if idle:
                victim = min(idle, key=lambda conn: conn.idle_since)
                victim.evicted = True
                victim.kill()
            else:
                self._evictions = 1

    def take_eviction(self) -> bool:
        """True once per eviction request: this response should carry Connection: close."""
        if not self._evictions:  # unlocked fast path; the locked check below decides
            return False
        with self._lock:
            if self._evictions:
                self._evictions -= 1
                return True
            return False


class HardenedHTTPServer:
    """HTTP/1.1 server with TLS 1.3, strict framing, deadlines and a bounded connection count."""

    def __init__(
        self,
        app: App,
        *,
        host: str,
        port: int,
        ssl_context_provider: Callable[[], ssl.SSLContext] | None,
        max_connections: int = 64,
        handshake_timeout: float = 10,
        header_timeout: float = 10,
        body_timeout: float = 30,
        idle_timeout: float = 60,
        max_body: int = 1 << 20,
        max_request_line: int = 8192,
        max_header_bytes: int = 32768,
        max_headers: int = 100,
        logger: logging.Logger | None = None,
        on_request: OnRequest | None = None,
        backlog: int = 128,
        reuse_port: bool = False,
        linger_timeout: float = 1.0,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.app = app
        self.host, self.port = host, port
        self.ssl_context_provider = ssl_context_provider
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.idle_timeout = idle_timeout
        self.limits = Limits(max_request_line, max_header_bytes, max_headers, max_body)
        self.log = logger or logging.getLogger("ferrohsm.http")
        self.on_request = on_request
        self.backlog, self.reuse_port = backlog, reuse_port
        self.linger_timeout = linger_timeout
        self._listener: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None  # wakes the accept loop
        # A selector, not select.select: that one fails on descriptors above 1024.
        self._selector: selectors.BaseSelector | None = None
        self._slots = threading.BoundedSemaphore(max_connections)
        self._table = ConnectionTable()
        self._workers: set[threading.Thread] = set()
        self._workers_lock = threading.Lock()
        self._stopping = threading.Event()
        self._accept_running = False
        self._accept_thread: threading.Thread | None = None
        self._accept_done = threading.Event()
        self._shutdown_lock = threading.Lock()
        self._closed = threading.Event()
        self._conn_counter = 0

    # ----------------------------------------------------------------- lifecycle

    @property
    def server_address(self) -> tuple[str, int]:
        """The bound (host, port); with port 0 this is where the kernel put us."""
        if self._address is None:
            raise RuntimeError("server is not bound; call start() first")
        return self._address

    def start(self) -> None:
        """Bind, listen and run the accept loop in a background thread; returns once listening."""
        self._bind()
        self._accept_running = True
        self._accept_thread = threading.Thread(target=self._accept_loop, name="ferrohsm-accept",
                                               daemon=True)
        self._accept_thread.start()

    def serve_forever(self) -> None:
        """Blocking variant of start(): returns after shutdown() (or a signal) has completed."""
        if self._listener is None:
            self._bind()
        self._accept_running = True
        self._accept_loop()
        self._closed.wait()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until shutdown has completed; True if it did within ``timeout``."""
        return self._closed.wait(timeout)

    def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish within ``grace``, join every worker."""
        if not self._shutdown_lock.acquire(blocking=False):
            self._closed.wait()
            return
        try:
            if self._closed.is_set():
                return
            self._stop_accepting()
            if self._accept_running:
                self._accept_done.wait()
            if self._accept_thread is not None:
                self._accept_thread.join()
            self._close_listener()
            self._drain(grace)
        finally:
            if self._selector is not None:
                self._selector.close()
            for sock in self._wake or ():
                sock.close()
            self._closed.set()
            self._shutdown_lock.release()

    def install_signal_handlers(self, grace: float = 10.0) -> None:
        """SIGTERM/SIGINT start a graceful shutdown (call from the main thread only).

        The handler only spawns a thread: joining workers inside a signal handler would deadlock
        when serve_forever() runs in the main thread.
        """

        def handle(signum: int, frame: types.FrameType | None) -> None:
            self.log.info("signal %d received: shutting down (grace %.1fs)", signum, grace)
            threading.Thread(target=self.shutdown, args=(grace,), name="ferrohsm-shutdown").start()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _bind(self) -> None:
        if self._stopping.is_set():
            raise RuntimeError("this server was shut down; create a new one")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.create_server(
            (self.host, self.port),
            family=family,
            backlog=self.backlog,
            reuse_port=self.reuse_port,
        )
        self._listener.setblocking(False)
        name = self._listener.getsockname()
        self._address = (str(name[0]), int(name[1]))
        self._wake = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake[0], selectors.EVENT_READ)

    def _stop_accepting(self) -> None:
        self._stopping.set()
        if self._wake is not None:
            try:
                self._wake[1].send(b"x")
            except OSError:
                pass

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()

    def _drain(self, grace: float) -> None:
        """Close idle connections now, wait for busy ones, then force what is left."""
        deadline = time.monotonic() + grace
        self._table.close_idle()
        for thread in self._snapshot_workers():
            thread.join(max(0.0, deadline - time.monotonic()))
        leftovers = [t for t in self._snapshot_workers() if t.is_alive()]
        if leftovers:
            self.log.warning("%d connection(s) still busy after %.1fs grace: closing them",
                             len(leftovers), grace)
            self._table.close_all()
            # Sockets are closed now; a thread still alive is stuck in application code, which
            # Python cannot interrupt: wait a little, once for all of them, then give up on it.
            final = time.monotonic() + self.linger_timeout + 1.0
            for thread in leftovers:
                thread.join(max(0.0, final - time.monotonic()))

    def _snapshot_workers(self) -> list[threading.Thread]:
        with self._workers_lock:
            return list(self._workers)

    # ----------------------------------------------------------------- accept loop

    def _accept_loop(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self._accept_step()
                except Exception:  # never let the accept loop die silently
                    self.log.exception("accept loop error")
                    time.sleep(0.05)
        finally:
            self._close_listener()
            self._accept_done.set()

    def _accept_step(self) -> None:
        """Take a slot, then a connection; while no slot is free, make room for a waiter."""
        if not self._slots.acquire(timeout=_SLOT_POLL):
            if self._listener_ready(0):  # somebody is queued in the backlog
                self._table.evict_one()
            return
        accepted = False
        try:
            accepted = self._accept_one()
        finally:
            if not accepted:
                self._slots.release()

    def _listener_ready(self, timeout: float | None) -> bool:
        assert self._selector is not None
        events = self._selector.select(timeout)
        return any(key.fileobj is self._listener for key, _ in events)

    def _accept_one(self) -> bool:
        """Wait for a connection (or the wake-up pipe) and hand it to a new worker."""
        assert self._listener is not None
        if not self._listener_ready(None) or self._stopping.is_set():
            return False
        try:
            sock, addr = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return False
        except OSError:
            self.log.exception("accept failed")
            time.sleep(0.05)  # e.g. EMFILE: do not spin
            return False
        return self._spawn(sock, addr)

    def _spawn(self, sock: socket.socket, addr: tuple[Any, ...]) -> bool:
        self._conn_counter += 1
        thread = threading.Thread(
            target=self._worker,
            args=(sock, addr),
            name=f"ferrohsm-conn-{self._conn_counter}",
            daemon=True,
        )
        with self._workers_lock:
            self._workers.add(thread)
        try:
            thread.start()
        except RuntimeError:
            self.log.exception("cannot start a worker thread")
            with self._workers_lock:
                self._workers.discard(thread)
            sock.close()
            return False
        return True

    # ----------------------------------------------------------------- connection

    def _worker(self, sock: socket.socket, addr: tuple[Any, ...]) -> None:
        conn = Conn(sock, str(addr[0]), int(addr[1]))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._table.add(conn) and self._handshake(conn):
                self._serve(conn)
        except PeerGone:
            pass
        except Exception:  # a bug here must cost one connection, never the server
            self.log.exception("connection from %s failed", conn.peer_ip)
        finally:
            self._table.remove(conn)
            conn.close()
            self._slots.release()
            with self._workers_lock:
                self._workers.discard(threading.current_thread())

    def _handshake(self, conn: Conn) -> bool:
        """TLS handshake in this worker under ``handshake_timeout``; False if it failed."""
        if self.ssl_context_provider is None:
            return True
        conn.sock.settimeout(self.handshake_timeout)
        try:
            context = self.ssl_context_provider()
            tls = self._table.wrap(conn, context)
            tls.do_handshake()
            conn.client_cert_der = tls.getpeercert(binary_form=True)
        except (OSError, ValueError) as exc:  # ssl.SSLError and TimeoutError are OSErrors
            self.log.debug("TLS handshake with %s failed: %s", conn.peer_ip, exc)
            return False
        if tls.version() != "TLSv1.3":  # defence in depth: the provider's context was too lax
            self.log.warning("refused %s from %s: TLS 1.3 only", tls.version(), conn.peer_ip)
            return False
        return True

    def _serve(self, conn: Conn) -> None:
        """Requests on one connection until either side wants it closed."""
        io = ConnectionIO(conn, self.limits)
        first = True
        while self._table.set_idle(conn):
            wait = self.header_timeout if first else self.idle_timeout
            result = io.read_request(wait, self.header_timeout, self.body_timeout,
                                     first, self._table.set_busy)
            if result is None:
                return  # idle timeout, peer closed, or evicted while idle
            if not self._respond(conn, io, result):
                return
            first = False

    def _respond(self, conn: Conn, io: ConnectionIO, result: ReadResult) -> bool:
        """Run the app (or answer a framing error) and write the response; True = keep going."""
        request = result.request
        if result.error is not None:
            response = error_response(result.error, request.request_id)
            keep_alive = False
        else:
            response = self._call_app(request)
            keep_alive = result.keep_alive and not response.close
            keep_alive = keep_alive and not self._stopping.is_set()
            keep_alive = keep_alive and not self._table.take_eviction()
        payload, response = self._render(request, response, keep_alive,
                                         result.http10_keep_alive)
        io.send(payload, self.body_timeout)
        self._report(request, response)
        if not keep_alive:
            io.linger(self.linger_timeout)
        return keep_alive

    def _call_app(self, request: Request) -> Response:
        """The application's response; exceptions become error responses, never tracebacks."""
        try:
            response = self.app(request)
            if not isinstance(response, Response):
                raise TypeError(f"application returned {type(response).__name__}")
            return response
        except FerroError as exc:
            return error_response(exc, request.request_id)
        except Exception:
            self.log.exception("unhandled error (request_id=%s %s %s)",
                               request.request_id, request.method, request.path)
            return error_response(FerroError(_INTERNAL_MESSAGE), request.request_id)

    def _render(self, request: Request, response: Response, keep_alive: bool,
                http10_keep_alive: bool) -> tuple[bytes, Response]:
        """The bytes to send and the response they carry (a 500 if the app's was unsendable)."""
        head_only = request.method == "HEAD"
        try:
            return render_response(response, request.request_id, keep_alive,
                                   http10_keep_alive, head_only), response
        except (ValueError, UnicodeEncodeError):
            self.log.exception("application produced an invalid response (request_id=%s)",
                               request.request_id)
            fallback = error_response(FerroError(_INTERNAL_MESSAGE), request.request_id)
            return render_response(fallback, request.request_id, keep_alive,
                                   http10_keep_alive, head_only), fallback

    def _report(self, request: Request, response: Response) -> None:
        if self.on_request is None:
            return
        try:
            self.on_request(request, response, time.monotonic() - request.received_at)
        except Exception:
            self.log.exception("on_request callback failed (request_id=%s)", request.request_id)
