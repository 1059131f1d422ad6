"""The access log: one JSON line per request, built by hand and written in batches off the loop.

Through ``logging`` each line cost a LogRecord, a formatter that parsed the message back, a
handler lock and a write syscall: about a quarter of the encrypt path's throughput (issue 18).
Here the request path only builds the line (escaping with the C JSON encoder) and appends it to a
deque (atomic in C, no lock); a writer thread joins whatever has queued up every ``interval``
seconds and writes it with one call, like the audit batch writer. ``close()`` writes what is
left, so no line is lost at shutdown (it is also registered with ``atexit``).

Lines carry names, routes, ids and statuses, never a token, a body or a query string: the
caller passes exactly the fields below and nothing else (tests/integration/test_observability*).
Levels follow the ``ferrohsm.access`` logger's effective level (``[logging] level``): INFO
writes every line; 401, 403 and 429 are written at WARNING, 5xx at ERROR, so they stay when
the level is WARNING.
"""

from __future__ import annotations

import atexit
import collections
import logging
import sys
import threading
import time
from json.encoder import encode_basestring_ascii as _q
from typing import TextIO

WARNING_STATUSES = frozenset({401, 403, 429})
LOGGER = "ferrohsm.access"


def level_of(status: int) -> int:
    """The level an access line is written at: refusals an operator should notice are warnings."""
    if status >= 500:
        return logging.ERROR
    if status in WARNING_STATUSES:
        return logging.WARNING
    return logging.INFO


_LEVEL_NAMES = {logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error"}


def _s(value: str | None) -> str:
    return "null" if value is None else _q(value)


def _ours(value: str | None) -> str:
    """A value FerroHSM made from a closed alphabet (hex ids, route templates, error codes, a
    sanitized correlation id): quoted without escaping, which is most of a line's cost."""
    return "null" if value is None else f'"{value}"'


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


class AccessLog:
    """Builds access lines and writes them in batches to ``stream`` (stderr by default)."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.05,
                 logger: logging.Logger | None = None) -> None:
        self._stream = stream
        self._logger = logger or logging.getLogger(LOGGER)
        self.interval = interval
        self._lines: collections.deque[str] = collections.deque()
        self._clock = _Clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.written = 0
        atexit.register(self.close)

    def enabled_for(self, status: int) -> bool:
        """Whether a response with ``status`` gets a line (cheap: the logger caches it)."""
        return self._logger.isEnabledFor(level_of(status))

    def line(self, fields: str, status: int, now: float | None = None) -> str:
        """A complete line: ``fields`` is the JSON members after the common prefix, already
        encoded (see ``fields``)."""
        level = level_of(status)
        ts = self._clock.stamp(time.time() if now is None else now)
        return (f'{{"ts":"{ts}","level":"{_LEVEL_NAMES[level]}","logger":"{LOGGER}",'
                f'{fields}}}\n')

    def write(self, line: str) -> None:
        """Queue one line; the writer thread writes it within ``interval``."""
        self._lines.append(line)
        if self._thread is None:
            self._start()

    def flush(self) -> None:
        """Write every queued line now (the writer thread, ``close`` and tests call it)."""
        with self._write_lock:
            lines = self._lines
            if not lines:
                return
            batch: list[str] = []
            try:
                while True:
                    batch.append(lines.popleft())
            except IndexError:
                pass
            stream = self._stream if self._stream is not None else sys.stderr
            try:
                stream.write("".join(batch))
                stream.flush()
            except (OSError, ValueError):  # stderr closed or full: lines are best effort
                return
            self.written += len(batch)

    def close(self) -> None:
        """Stop the writer thread and write what is left. Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
            with self._start_lock:
                self._thread = None  # a later write (another server in this process) restarts
        self.flush()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                return
            self._stop.clear()
            thread = threading.Thread(target=self._run, name="ferrohsm-access-log", daemon=True)
            thread.start()
            self._thread = thread

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()
        self.flush()


def fields(*, method: str, route: str, path: str, status: int, duration_ms: float,
           client: str | None, peer: str, user: str | None, role: str | None,
           session: str | None, fingerprint: str | None, request_id: str,
           trace_id: str | None, span_id: str | None, trace_flags: str | None,
           correlation_id: str | None, user_agent: str | None, server_port: int | None,
           error_type: str | None) -> str:
    """The request-specific members of an access line, named by the OpenTelemetry semantic
    conventions (HTTP, user, client, TLS). What a client chose (path, addresses, user, agent,
    request id) is JSON-escaped by the C encoder; ``route``, ``role``, ``error_type``,
    ``fingerprint``, the trace ids and ``correlation_id`` (checked by api/http.py's
    is_sane_request_id) come from closed alphabets and are only quoted."""
    return (f'"http.request.method":{_q(method)},"http.route":{_ours(route)},'
            f'"url.path":{_q(path)},"http.response.status_code":{status},'
            f'"duration_ms":{duration_ms:.3f},"client.address":{_s(client)},'
            f'"network.peer.address":{_q(peer)},"server.port":'
            f'{"null" if server_port is None else server_port},'
            f'"user.id":{_s(user)},"user.roles":{"null" if role is None else f"[{_ours(role)}]"},'
            f'"session.id":{_s(session)},"tls.client.x5t_s256":{_ours(fingerprint)},'
            f'"user_agent.original":{_s(user_agent)},"error.type":{_ours(error_type)},'
            f'"request_id":{_q(request_id)},"trace_id":{_ours(trace_id)},'
            f'"span_id":{_ours(span_id)},"trace_flags":{_ours(trace_flags)},'
            f'"correlation_id":{_ours(correlation_id)}')


ACCESS = AccessLog()
"""The process's access log (setup_logging points it at stderr; tests may give it a stream)."""


def use_stream(stream: TextIO | None) -> None:
    """Write the process's access lines to ``stream`` (None: sys.stderr as it is at write time)."""
    ACCESS.flush()
    ACCESS._stream = stream
