"""The span records' way out of the serving process: a writer thread and an exporter child.

The request path appends records (tracing.RequestRecord: one plain tuple holding a request's
spans) to ``SpanPipe.queue``. A writer thread takes what has queued every ``interval`` seconds
(sooner when a burst wakes it), encodes it with ``marshal`` (plain tuples, lists, dicts, str,
int, bool: the cheapest encoding there is) and writes it, length-prefixed, to a pipe read by
the exporter child (telemetry/otlpexport.py), started once here. The child does the expensive
part, the spans and their protobuf, on another core and at a lower priority.

The server never waits for the child: the pipe is non-blocking and a frame is only written
when the pipe has room for all of it, so a slow or stuck child (an unreachable collector) costs
dropped spans, counted (``dropped``, ``ferrohsm_trace_spans_total{outcome="dropped"}``) and
logged at most once a minute, never a blocked event loop. What the child could not deliver
(the collector down or refusing) it reports back on its stdout, a running count per child,
summed here as ``failed`` (``outcome="failed"``). A child that exits is restarted with
a backoff (1 s doubling to 60 s; the first exit is logged as a warning). ``close()`` hands the
child what is queued, closes the pipe and gives the child ``grace`` seconds to export it.
"""

from __future__ import annotations

import collections
import fcntl
import json
import logging
import marshal
import os
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("ferrohsm.telemetry")
HEADER = struct.Struct(">I")
CHUNK = 512  # records a frame (the child sends its spans in OTLP requests of the batch size)
MAX_QUEUED = 200_000  # spans kept at most between two writes; the rest are dropped
PIPE_BYTES = 1 << 20  # asked of the kernel (Linux's default limit for a user, 1 MiB)
STUCK_SECONDS = 2.0  # a frame half written for this long: the child is stuck, replaced
# The child imports its package from the server's own sys.path (a shiv extraction included).
BOOT = ("import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
        "from ferrohsm.telemetry.otlpexport import main; sys.exit(main())")


# What the exporter needs of the server's environment: the OTEL_* variables, and what the HTTP
# client (requests) and Python read. Nothing else is passed: secrets such as
# FERROHSM_MASTER_KEY, or a DSN under a configured variable name, stay in the server.
CHILD_VARIABLES = frozenset({
    "PATH", "HOME", "TMPDIR", "TZ", "LANG", "LC_ALL", "LC_CTYPE", "SSL_CERT_FILE",
    "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY",
    "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy", "all_proxy"})


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The exporter child's environment (an allow-list, see CHILD_VARIABLES)."""
    return {k: v for k, v in environ.items() if k in CHILD_VARIABLES or k.startswith("OTEL_")}


def exporter_command() -> list[str]:
    """This interpreter running telemetry/otlpexport.py with the server's sys.path."""
    return [sys.executable, "-c", BOOT, json.dumps([p for p in sys.path if p])]


def _positive(environ: Mapping[str, str], name: str, default: int, warn: bool = True) -> int:
    """A positive integer variable, or ``default`` (with a warning when it is malformed)."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        value = 0
    if value <= 0:
        if warn:
            log.warning("%s=%s is not a positive integer; using %d", name, raw[:20], default)
        return default
    return value


def batch_settings(environ: Mapping[str, str], warn: bool = True) -> tuple[float, int, int]:
    """The batch processor's standard variables, where the writer thread plays its part:
    (seconds between writes, records a frame, spans kept at most between writes) from
    OTEL_BSP_SCHEDULE_DELAY (ms), OTEL_BSP_MAX_EXPORT_BATCH_SIZE and OTEL_BSP_MAX_QUEUE_SIZE.
    The exporter child sends a frame's spans in OTLP requests of the batch size (spans).
    Unset, the defaults are ours (150 ms, 512, 200,000), not the SDK's (5 s, 512, 2,048):
    2,048 spans overflow within a second at a few thousand requests a second. ``warn``: the
    server says what is malformed; the exporter child reads the same and says nothing."""
    delay = _positive(environ, "OTEL_BSP_SCHEDULE_DELAY", 150, warn)
    chunk = _positive(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", CHUNK, warn)
    queued = _positive(environ, "OTEL_BSP_MAX_QUEUE_SIZE", MAX_QUEUED, warn)
    return delay / 1000.0, min(chunk, queued), queued


class SpanPipe:
    """The queue, the writer thread and the exporter child process."""

    def __init__(self, command: list[str] | None = None, interval: float | None = None,
                 grace: float = 5.0, pipe_bytes: int = PIPE_BYTES,
                 environ: Mapping[str, str] | None = None) -> None:
        self.queue: collections.deque[Any] = collections.deque()
        self.wake = threading.Event()
        delay, self._chunk, self._max_queued = batch_settings(
            os.environ if environ is None else environ)
        self.interval = delay if interval is None else interval
        self.grace, self._pipe_bytes = grace, pipe_bytes
        self._command = command or exporter_command()
        self.sent = self.dropped = self.restarts = 0  # spans (see weigh), restarts
        # the spans a list of records holds (one pass in C, not a call a record); None: one each
        self.weigh: Callable[[list[Any]], int] | None = None
        self._failed_before = self._failed_now = 0  # by children gone; by the running one
        self._handed_now = self._exported_now = 0  # spans to the running child; it delivered
        self._reports = b""  # the running child's report lines not complete yet
        self.proc: subprocess.Popen[bytes] | None = None
        self._fd = -1
        self._capacity = 0
        self._backoff = 1.0
        self._restart_at = 0.0
        self._warned = False
        self._drop_logged = 0.0
        self._started = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one writer at a time: the thread, or close()
        self._spawn()
        self._thread = threading.Thread(target=self._run, name="ferrohsm-span-export",
                                        daemon=True)
        self._thread.start()

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "dropped": self.dropped, "failed": self.failed,
                "restarts": self.restarts, "queued": len(self.queue)}

    @property
    def failed(self) -> int:
        """Spans the exporter children were handed and could not deliver."""
        return self._failed_before + self._failed_now

    def close(self) -> None:
        """Write what is queued, close the pipe (end of input for the child) and wait up to
        ``grace`` seconds for the child to export it; kill it after that. Idempotent."""
        self._stop.set()
        self.wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(self.grace)
        with self._lock:
            self._drain()
            proc, fd = self.proc, self._fd
            self.proc, self._fd = None, -1
        if fd >= 0:
            os.close(fd)
        if proc is not None:
            try:
                proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                log.warning("the span exporter did not finish within %.0f s; stopped", self.grace)
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    # ---- the writer thread ----

    def _run(self) -> None:
        while not self._stop.is_set():
            self.wake.wait(self.interval)
            self.wake.clear()
            with self._lock:
                self._drain()

    def _drain(self) -> None:
        """Send every queued record to the child in frames of CHUNK, or count it dropped."""
        queue = self.queue
        popleft = queue.popleft  # the loop thread appends meanwhile: take what is there now
        batch: list[Any] = [popleft() for _ in range(min(len(queue), self._max_queued))]
        dropped: list[Any] = []
        if queue and len(batch) >= self._max_queued:  # the bound was hit: the rest goes
            dropped = [popleft() for _ in range(len(queue))]
        if self.weigh is not None:  # the bound counts spans, a record holds several
            kept = self._within_bound(batch)
            dropped[:0], batch = batch[kept:], batch[:kept]
        if dropped:
            self._drop(self._spans(dropped))
        self._collect()
        alive = self._alive()  # also when idle: a dead child is restarted before it is needed
        if not batch:
            return
        if not alive:
            self._drop(self._spans(batch))
            return
        size = self._chunk
        for at in range(0, len(batch), size):
            chunk = batch[at:at + size]
            if self._send(marshal.dumps(chunk)):
                spans = self._spans(chunk)
                self.sent += spans
                self._handed_now += spans
            else:
                self._drop(self._spans(batch[at:]))
                return

    def _within_bound(self, batch: list[Any]) -> int:
        """How many of the oldest records hold at most the bound's spans between them."""
        weigh, room = self.weigh, self._max_queued
        assert weigh is not None  # noqa: S101  narrows a type for mypy, not a runtime check
        if weigh(batch) <= room:  # nearly always: no record to leave out
            return len(batch)
        for index, record in enumerate(batch):
            room -= weigh([record])
            if room < 0:
                return index
        return len(batch)

    def _spans(self, records: list[Any]) -> int:
        weigh = self.weigh
        return len(records) if weigh is None else weigh(records)

    def _send(self, payload: bytes) -> bool:
        """Write one frame without ever waiting on a healthy pipe: False when the pipe has no
        room for it (a busy child) or the child is gone."""
        frame = HEADER.pack(len(payload)) + payload
        # Room with a margin: the kernel counts a pipe in pages, and a write that does not
        # fit the last page's rest starts a new one, so bytes unread understate what is
        # taken; a write that did not fit was cut short and waited on (a child replaced for
        # it, an outside tester saw, during a collector outage).
        margin = self._capacity // 8
        if len(frame) <= self._capacity - margin and \
                self._capacity - margin - _unread(self._fd) < len(frame):
            return False
        try:
            written = os.write(self._fd, frame)
        except BlockingIOError:
            return False
        except OSError:  # EPIPE: the child exited
            self._lost()
            return False
        if written < len(frame) and not self._finish(memoryview(frame)[written:]):
            self._replace("stuck with a frame half read")
            return False
        return True

    def _finish(self, rest: memoryview) -> bool:
        """The rest of a frame larger than the pipe: wait for room, at most STUCK_SECONDS."""
        deadline = time.monotonic() + STUCK_SECONDS
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        while rest:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                return False
            try:
                rest = rest[os.write(self._fd, rest):]
            except BlockingIOError:
                continue
            except OSError:
                return False
        return True

    def _drop(self, count: int) -> None:
        self.dropped += count
        now = time.monotonic()
        if now - self._drop_logged >= 60.0:
            self._drop_logged = now
            log.warning("span exporter busy or down: %d spans dropped so far", self.dropped)

    def _collect(self) -> None:
        """Take in the running child's latest count of spans not delivered (never waits)."""
        proc = self.proc
        if proc is None or proc.stdout is None:
            return
        try:
            data = os.read(proc.stdout.fileno(), 65536)
        except (BlockingIOError, OSError, ValueError):
            return
        lines = (self._reports + data).split(b"\n")
        self._reports = lines[-1][-64:]
        for line in reversed(lines[:-1]):
            counts = line.split()
            if 1 <= len(counts) <= 2 and all(c.isdigit() for c in counts):
                self._failed_now = max(self._failed_now, int(counts[0]))
                if len(counts) == 2:
                    self._exported_now = max(self._exported_now, int(counts[1]))
                break

    # ---- the child ----

    def _spawn(self) -> None:
        read, write = os.pipe()
        try:
            self._capacity = fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, self._pipe_bytes)
        except OSError:  # above the user's limit: keep the kernel's default
            self._capacity = fcntl.fcntl(write, fcntl.F_GETPIPE_SZ)
        os.set_blocking(write, False)
        try:
            # its own session: a terminal's Ctrl-C reaches the server, which then closes the
            # pipe, and the child exports what it holds before it exits
            self.proc = subprocess.Popen(  # noqa: S603  this interpreter, fixed arguments
                self._command, stdin=read, stdout=subprocess.PIPE, start_new_session=True,
                env=child_environment(os.environ))
        except OSError as exc:
            os.close(write)
            self.proc = None
            log.warning("the span exporter could not start: %s", exc.strerror)
            self._restart_later()
            return
        finally:
            os.close(read)
        self._fd = write
        self._started = time.monotonic()
        if self.proc.stdout is not None:
            os.set_blocking(self.proc.stdout.fileno(), False)

    def _alive(self) -> bool:
        """Whether a child reads the pipe now, restarting it when its backoff is over."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            return True
        if proc is not None:
            self._lost()
        if self._stop.is_set() or time.monotonic() < self._restart_at:
            return False
        self._spawn()
        self.restarts += 1  # after the spawn: a reader of the count finds the new child
        return self.proc is not None

    def _lost(self) -> None:
        """The child exited (or was replaced): close its pipe, restart it after a backoff."""
        proc, self.proc = self.proc, None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if proc is None:
            return
        stopped = proc.poll() is None  # replaced by us (stuck), not exited by itself
        if stopped:
            proc.kill()
        code = proc.wait()
        self.proc = proc
        self._collect()  # its last counts, then it counts among the gone
        self.proc = None
        held = max(0, self._handed_now - self._failed_now - self._exported_now)
        self._failed_before, self._failed_now, self._reports = self.failed + held, 0, b""
        self._handed_now = self._exported_now = 0
        if proc.stdout is not None:
            proc.stdout.close()
        what = "was stopped" if stopped else f"exited (status {code})"
        if not self._warned:
            self._warned = True
            log.warning("the span exporter process %s; %d spans it held are counted as "
                        "failed; restarting it, spans are dropped meanwhile", what, held)
        else:
            log.info("the span exporter process %s again (%d spans it held counted as failed)",
                     what, held)
        if time.monotonic() - self._started > 60.0:
            self._backoff = 1.0  # it had been running well: restart soon
        self._restart_later()

    def _restart_later(self) -> None:
        self._restart_at = time.monotonic() + self._backoff
        self._backoff = min(60.0, self._backoff * 2)

    def _replace(self, why: str) -> None:
        log.warning("the span exporter is %s; replacing it", why)
        self._lost()


def _unread(fd: int) -> int:
    """Bytes written to the pipe and not read yet (Linux: FIONREAD works on either end)."""
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(buf, sys.byteorder)
