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

    def record(self, status: int, method: str, route: str, path: str, seconds: float,
               client: str | None, peer: str, server_port: int | None, user: str | None,
               role: str | None, session: str | None, fingerprint: str | None,
               user_agent: str | None, error_type: str | None, request_id: str,
               trace: tuple[str, str, str], correlation_id: str | None) -> None:
        """Queue the line of one request whose level is on (``enabled_for``, checked by the
        caller first). One f-string, positional arguments: this is most of the line's cost.
        Names follow the OpenTelemetry semantic conventions. What a client chose (method,
        path, addresses, user, session, agent, request id) is escaped by the C JSON encoder;
        ``route`` (a route template), ``role``, ``error_type`` (an error code),
        ``fingerprint``, the trace ids and ``correlation_id`` (api/http.py
        is_sane_request_id) come from closed alphabets and are only quoted."""
        level = level_of(status)
        now = time.time()
        q = _q
        n = "null"
        roles = n if role is None else '["' + role + '"]'
        thumb = n if fingerprint is None else '"' + fingerprint + '"'
        error = n if error_type is None else '"' + error_type + '"'
        correlation = n if correlation_id is None else '"' + correlation_id + '"'
        self._lines.append(
            f'{{"ts":"{self._clock.stamp(now)}","level":"{_LEVEL_NAMES[level]}",'
            f'"logger":"{LOGGER}","http.request.method":{q(method)},"http.route":"{route}",'
            f'"url.path":{q(path)},"http.response.status_code":{status},'
            f'"duration_ms":{seconds * 1000:.3f},'
            f'"client.address":{n if client is None else q(client)},'
            f'"network.peer.address":{q(peer)},'
            f'"server.port":{n if server_port is None else server_port},'
            f'"user.id":{n if user is None else q(user)},"user.roles":{roles},'
            f'"session.id":{n if session is None else q(session)},'
            f'"tls.client.x5t_s256":{thumb},'
            f'"user_agent.original":{n if user_agent is None else q(user_agent)},'
            f'"error.type":{error},"request_id":{q(request_id)},"trace_id":"{trace[0]}",'
            f'"span_id":"{trace[1]}","trace_flags":"{trace[2]}",'
            f'"correlation_id":{correlation}}}\n')
        if self._thread is None:
            self._start()

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


ACCESS = AccessLog()
"""The process's access log (setup_logging points it at stderr; tests may give it a stream)."""


def use_stream(stream: TextIO | None) -> None:
    """Write the process's access lines to ``stream`` (None: sys.stderr as it is at write time)."""
    ACCESS.flush()
    ACCESS._stream = stream
