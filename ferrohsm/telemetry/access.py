"""The access log: one JSON line per request, built by hand and written in batches off the loop.

Through ``logging`` each line cost a LogRecord, a formatter that parsed the message back, a
handler lock and a write syscall: about a quarter of the encrypt path's throughput (issue 18).
Here the request path only appends the line's values, as one tuple, to a deque (atomic in C, no
lock); a writer thread formats whatever has queued up every ``interval`` seconds by hand
(escaping with the C JSON encoder, in one tight loop) and writes it with one call, like the
audit batch writer. ``close()`` writes what is left, so no line is lost at shutdown (it is also
registered with ``atexit``; a line logged after that is written by the thread that logs it).

The event loop formats what has queued at the end of each of its turns (``format_queued``), so
the writer thread mostly only writes. The served encrypt path paid for the access log far more
than the 6 µs a line costs in-process (the writer thread taking the interpreter from the loop
every 5 ms, then running with the loop's working set out of the caches): 21 µs of CPU a
request with the writer formatting, 17 with the loop formatting, in an 8-round A/B
(bench/RESULTS.md, 2026-12-06, eighth session). Lines from worker threads' requests are
formatted by the writer, as are those queued while it holds the lock: the loop never waits for
a write to stderr.

Every 5 ms while lines flow, not every 50: measured (bench/RESULTS.md), the encrypt path lost
4-7 % to the access log at 50 ms and 2-4 % at 5 ms, though the formatting is the same work
either way (probably: lines kept waiting longer hold more of the loop's memory out of reuse,
and the writer holds the interpreter for a longer stretch at once). An idle writer backs off
to ``idle_interval`` so an idle server is not woken 200 times a second.

The process's other log lines (telemetry/logs.py) are queued here too, formatted already
(``add_line``), so one thread writes stderr, in order, and only that thread can block on it: a
stderr nobody reads (a stuck log shipper) stalls neither a request nor a shutdown. ``close()``
gives the writer a bounded time (``CLOSE_SECONDS``) and drops what it cannot write; lines
queued while stderr takes nothing are dropped beyond ``MAX_QUEUED``. A forked child
(``processes = N``) starts with an empty queue and a writer of its own.

Several processes on one stderr (``processes = N``: the children inherit it): a pipe or a
stream socket (journald) takes a write of at most PIPE_BUF bytes whole, but may interleave longer
ones from two writers at any byte, which would cut lines in two. ``share_stream()`` makes every
write whole lines of at most PIPE_BUF bytes (a longer line alone).

Lines carry names, routes, ids and statuses, never a token, a body or a query string: the
caller passes exactly the fields below and nothing else (tests/integration/test_observability*).
Levels follow the ``ferrohsm.access`` logger's effective level (``[logging] level``): INFO
writes every line; 401, 403, 429 and 505 (a client's protocol version: its mistake, not the
server's) are written at WARNING, the other 5xx at ERROR, so they stay when the level is WARNING.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import select
import sys
import threading
import time
import weakref
from json.encoder import encode_basestring_ascii as _q
from typing import TextIO

from .semconv import method_label, method_original
from .tracecontext import Parent, new_span_id, new_trace_and_span_ids

WARNING_STATUSES = frozenset({401, 403, 429, 505})
PIPE_BUF = select.PIPE_BUF  # what a pipe takes whole: 4096 on Linux
LOGGER = "ferrohsm.access"


def level_of(status: int) -> int:
    """The level an access line is written at: refusals an operator should notice are warnings."""
    if status in WARNING_STATUSES:  # first: 505 is a 5xx the client caused
        return logging.WARNING
    if status >= 500:
        return logging.ERROR
    return logging.INFO


# What Application hands over per request, in this order: time.time(), status, method, route
# template, path, seconds, client address, peer address, server port, user id, role value,
# session id, certificate thumbprint, user agent, error code, request id, the exported span's
# (trace id, span id, flags) or, for a request whose spans are not exported, the caller's
# Parent or None (its ids are made by the writer: nothing else needs them), correlation id.
Values = tuple[float, int, str, str | None, str, float, str | None, str, int | None, str | None,
               str | None, str | None, str | None, str | None, str | None, str,
               tuple[str, str, str] | Parent | None, str | None]


def untraced_ids(parent: Parent | None) -> tuple[str, str, str]:
    """trace id, span id and flags of a request whose spans are not exported: the caller's
    trace and flags, or a new trace; always a new span id (the request's server span)."""
    if parent is None:
        return (*new_trace_and_span_ids(), "00")
    return parent.trace_id, new_span_id(), f"{parent.flags:02x}"

MAX_QUEUED = 200_000  # lines held while stderr takes none (about 100 MB at most), then dropped
CLOSE_SECONDS = 5.0  # how long close() waits for the writer, then as long again / 5 for the lock
# Every instance, reset in a forked child (plain references: nothing runs when one is freed).
_LOGS: list[weakref.ref[AccessLog]] = []
_LEVEL_NAMES = {logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error"}
_FRAGMENTS = 4096  # cached line fragments per kind, before the caches start again


def _head(status: int, method: str, route: str | None, path: str) -> str:
    """The fields from ``logger`` to the status code (``_format``): the method as the semantic
    conventions name it (semconv.py), with the method as sent when they do not know it."""
    label, original = method_label(method), method_original(method)
    extra = "" if original is None else f'"http.request.method_original":{_q(original)},'
    return (f'"logger":"{LOGGER}","http.request.method":"{label}",{extra}'
            f'"http.route":{"null" if route is None else _q(route)},'
            f'"url.path":{_q(path)},"http.response.status_code":{int(status)}')


def _body(client: str | None, peer: str, port: int | None, user: str | None,
          role: str | None, session: str | None, thumb: str | None, agent: str | None,
          error: str | None) -> str:
    """The fields from the client address to the error type (``_format``)."""
    n, d = "null", '"'
    return (f'"client.address":{n if client is None else _q(client)},'
            f'"network.peer.address":{_q(peer)},"server.port":{n if port is None else int(port)},'
            f'"user.id":{n if user is None else _q(user)},'
            f'"user.roles":{n if role is None else "[" + d + role + d + "]"},'
            f'"session.id":{n if session is None else _q(session)},'
            f'"tls.client.x5t_s256":{n if thumb is None else d + thumb + d},'
            f'"user_agent.original":{n if agent is None else _q(agent)},'
            f'"error.type":{n if error is None else d + error + d}')


class _Clock:
    """The ``ts`` prefix, formatted once a second (strftime per line is a measurable cost)."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def stamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


def _descriptor(stream: TextIO) -> int | None:
    """The file descriptor under ``stream`` (None: an in-memory one). Lines are written to it
    with os.write, not through the stream: a write blocked on a full pipe then holds no lock
    of the interpreter's stderr object, which its exit (a flush) and every print would wait
    for forever, and which a process forked meanwhile would inherit held."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _write_all(fd: int, data: bytes, deadline: float | None) -> bool:
    """``data`` written to ``fd``; with a ``deadline`` (monotonic), False once the descriptor
    has taken nothing until then (a pipe nobody reads). A piece of at most PIPE_BUF bytes is
    taken whole by a pipe that has room for it."""
    view = memoryview(data)
    while view:
        if deadline is not None:
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            if not poller.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                return False
        view = view[os.write(fd, view):]
    return True


class AccessLog:
    """Builds access lines and writes them in batches to ``stream`` (stderr by default)."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.005,
                 logger: logging.Logger | None = None, idle_interval: float = 0.1) -> None:
        self._stream = stream
        self._logger = logger or logging.getLogger(LOGGER)
        self.interval = interval
        self.idle_interval = max(interval, idle_interval)  # after a turn that found no line
        self._lines: collections.deque[Values | str] = collections.deque()
        self._text: list[str] = []  # lines the loop formatted (format_queued), not yet written
        self._clock = _Clock()
        self._heads: dict[tuple[object, ...], str] = {}  # see _format
        self._bodies: dict[tuple[object, ...], str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.written = 0
        self.dropped = 0
        self.shared = False  # other processes write to the same stream (share_stream)
        self._stuck = False  # a close found the writer blocked on the stream (close)
        self._exiting = False  # the interpreter is exiting: no more writer threads (_at_exit)
        atexit.register(self._at_exit)
        _LOGS[:] = [ref for ref in _LOGS if ref() is not None]
        _LOGS.append(weakref.ref(self))

    def enabled_for(self, status: int) -> bool:
        """Whether a response with ``status`` gets a line (cheap: the logger caches it)."""
        return self._logger.isEnabledFor(level_of(status))

    def record(self, values: Values | str) -> None:
        """Queue the line of one request whose level is on (``enabled_for``, checked by the
        caller first). ``values`` are the fields of ``Values``, in order, already free of
        secrets; the request path only packs them (one tuple: a call with a dozen and a half
        arguments would cost more than the append), the writer thread formats them. A str is
        a line formatted already (``add_line``)."""
        lines = self._lines
        if len(lines) >= MAX_QUEUED:  # the writer is stuck on a stderr nobody reads
            self.dropped += 1
            return
        lines.append(values)
        if self._thread is None:
            self._start()

    def format_queued(self) -> None:
        """Format the lines queued so far, here and now (the event loop calls it at the end of
        each turn), for the writer thread to write. Returns at once, formatting nothing, while
        the writer holds the lock (it may be blocked on a full stderr): the writer then
        formats them itself. Lines keep their order: both format and take under one lock."""
        lines = self._lines
        if not lines or not self._write_lock.acquire(blocking=False):
            return
        try:
            queued = []
            while lines:  # the only consumer while the lock is held: popleft cannot fail
                queued.append(lines.popleft())
            self._text += self._format(queued)
        finally:
            self._write_lock.release()

    def add_line(self, text: str) -> None:
        """Queue a line formatted already (the process's other log lines, telemetry/logs.py),
        to be written in its place among the access lines: the caller never waits on stderr."""
        self.record(text)

    def flush(self) -> int:
        """Write every queued line now (the writer thread and tests call it); how many lines
        were queued, formatted already or not."""
        with self._write_lock:
            return self._write_queued()

    def _write_queued(self, wait: float | None = None) -> int:
        """``flush`` under the lock: how many lines were queued. With ``wait``, gives stderr
        that many seconds to take them and drops the rest (``_drop``)."""
        lines, batch = self._lines, self._text
        if not lines and not batch:
            return 0
        queued = []
        while lines:  # the only consumer (under _write_lock): popleft cannot fail
            queued.append(lines.popleft())
        self._text = []
        batch += self._format(queued)
        stream = self._stream if self._stream is not None else sys.stderr
        fd = _descriptor(stream)
        try:
            if fd is None:  # a test's buffer
                for chunk in whole_lines(batch, PIPE_BUF) if self.shared else ("".join(batch),):
                    stream.write(chunk)
                    stream.flush()
            else:
                deadline = None if wait is None else time.monotonic() + wait
                whole = self.shared or deadline is not None  # a pipe takes each piece whole
                for at, chunk in enumerate(pieces := whole_lines(batch, PIPE_BUF) if whole
                                           else ["".join(batch)]):
                    if not _write_all(fd, chunk.encode("utf-8", "backslashreplace"), deadline):
                        self._stuck = True
                        self.dropped += sum(piece.count("\n") for piece in pieces[at:])
                        return len(batch)
        except (OSError, ValueError):  # stderr closed or gone: lines are best effort
            return len(batch)
        self.written += len(batch)
        return len(batch)

    def _format(self, queued: list[Values | str]) -> list[str]:
        """The JSON lines, named by the OpenTelemetry semantic conventions, in one loop (no
        call per line but the escaping). What a client chose (method, path, addresses, user,
        session, agent, request id) is escaped by the C JSON encoder; the route template, the
        role, the error code, the certificate thumbprint, the trace ids and the correlation id
        (api/http.py is_sane_request_id) come from closed alphabets and are only quoted.

        A client's requests mostly repeat everything but the time, the ids and the duration: the
        two runs of fields between those (method to status; client address to error) are
        formatted once per distinct set of values and then taken from a cache, emptied before a
        batch once it holds more than _FRAGMENTS of a kind."""
        stamp, names, out, d = self._clock.stamp, _LEVEL_NAMES, [], '"'
        heads, bodies = self._heads, self._bodies
        if len(heads) > _FRAGMENTS or len(bodies) > _FRAGMENTS:
            heads.clear()
            bodies.clear()
        for values in queued:
            if isinstance(values, str):  # a line formatted already (add_line)
                out.append(values)
                continue
            try:
                head_key, body_key = values[1:5], values[6:15]
                head = heads.get(head_key)
                if head is None:
                    head = heads[head_key] = _head(*head_key)
                body = bodies.get(body_key)
                if body is None:
                    body = bodies[body_key] = _body(*body_key)
                trace, correlation = values[16], values[17]
                if not isinstance(trace, tuple):  # spans not exported: ids made here
                    trace = untraced_ids(trace)
                out.append(
                    f'{{"ts":"{stamp(values[0])}","level":"{names[level_of(values[1])]}",'
                    f'{head},"duration_ms":{values[5] * 1000:.3f},{body},'
                    f'"request_id":{_q(values[15])},"trace_id":"{trace[0]}",'
                    f'"span_id":"{trace[1]}","trace_flags":"{trace[2]}","correlation_id":'
                    f'{"null" if correlation is None else d + correlation + d}}}\n')
            except Exception:  # a value of a wrong type (a bug): lose the line, not the thread
                self.dropped += 1
        return out

    def close(self) -> None:
        """Stop the writer thread and write what is left, in ``CLOSE_SECONDS`` at most: a
        stderr nobody reads (a stuck log shipper) must not keep a stopping server alive; what
        cannot be written then is counted in ``dropped``. Idempotent."""
        self._stop.set()
        thread = self._thread
        wait = 0.0 if self._stuck else CLOSE_SECONDS
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait)
            with self._start_lock:
                self._thread = None  # a later write (another server in this process) restarts
        self._write_now(wait / 5)

    def _write_now(self, wait: float) -> None:
        """Write what is queued from this thread, ``wait`` seconds at most (for the lock, then
        for stderr to take it); else drop it (the writer is blocked on stderr) and wait no more
        from now on."""
        if not self._write_lock.acquire(timeout=wait):
            self._stuck = True
            self.dropped += len(self._lines) + len(self._text)
            self._lines.clear()  # the writer pops only under the lock: none in flight here
            self._text = []
            return
        try:
            self._write_queued(wait)
        finally:
            self._write_lock.release()

    def drain(self, wait: float = 1.0) -> None:
        """Write what is queued before a line printed straight to stderr (a fatal start-up
        reason in plain text), so that it comes after them; ``wait`` seconds at most."""
        self._write_now(0.0 if self._stuck else wait)

    def _forked(self) -> None:
        """In a child just forked (processes = N): the parent's writer thread did not come
        along, its locks may be held for good, and its queued lines are the parent's to write."""
        self._lines = collections.deque()
        self._text = []
        self._thread, self._stuck = None, False
        self._stop, self._start_lock, self._write_lock = (
            threading.Event(), threading.Lock(), threading.Lock())

    def _at_exit(self) -> None:
        self._exiting = True  # a line logged after this (a daemon thread, a later atexit
        self.close()  # handler) is written by its own thread: a new writer would die unheard

    def _start(self) -> None:
        if self._exiting:
            self._write_now(0.0 if self._stuck else CLOSE_SECONDS / 5)
            return
        with self._start_lock:
            if self._thread is not None:
                return
            self._stop.clear()
            thread = threading.Thread(target=self._run, name="ferrohsm-access-log", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # the interpreter is exiting: write it here, if stderr takes it
                self._write_now(0.0 if self._stuck else CLOSE_SECONDS / 5)
                return
            self._thread = thread

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            wait = self.interval if self.flush() else self.idle_interval
        self.flush()


def _after_fork_in_child() -> None:
    for ref in _LOGS:
        access = ref()
        if access is not None:
            access._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)
ACCESS = AccessLog()
"""The process's access log (setup_logging points it at stderr; tests may give it a stream)."""


def whole_lines(lines: list[str], limit: int) -> list[str]:
    """``lines`` joined into pieces of at most ``limit`` characters (the lines are ASCII: one
    byte each), each ending at a line's end; a longer line is a piece alone."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        if current and size + len(line) > limit:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        pieces.append("".join(current))
    return pieces


def share_stream() -> None:
    """Other processes write to this process's stderr too: write whole lines, PIPE_BUF bytes at
    most a write, so that no line is cut by another process's write."""
    ACCESS.shared = True


def use_stream(stream: TextIO | None) -> None:
    """Write the process's access lines to ``stream`` (None: sys.stderr as it is at write time)."""
    ACCESS.flush()
    ACCESS._stream = stream


def stream_in_use() -> TextIO | None:
    """The stream given to ``use_stream`` (None: stderr at write time)."""
    return ACCESS._stream
