"""Who makes a handed-over group of audit records durable: a committer thread, or the event
loop itself through io_uring (api/uring.py). The dispatcher (api/dispatch.py) decides when a
group is handed over; a flusher settles it: ``settle(batches, failure)`` puts each answer
whose tickets are durable back on the loop's way out, and turns each other one into a 503 with
``failure`` as the reason.

ThreadFlusher: ``wait(newest ticket)`` on a thread; one flush covers every batch handed over
meanwhile. Any sink.

RingFlusher (``[audit] flush = "auto"``, a FileSink, Linux x86-64 with io_uring): the loop starts
the fsync (``start_flush``: the sink's flush lock and the fd to flush), the kernel runs it, and
its completion is an event in the loop's selector (the ring's eventfd, then ``ready``). No thread and no GIL
hand-off per group. While a flush that many requests wait on is in flight, the loop may poll
instead of sleeping (``spinning``, for at most ``spin`` seconds, yielding the core each time):
on a virtual machine a sleeping core takes tens of microseconds to wake when the completion
arrives, and every waiting request waits for that too. Measured in bench/RESULTS.md.

Where the fsync's own CPU goes (``FlushPlan.cores``): the kernel worker that runs the loop's
fsyncs starts on the loop's core, so a server pinned to one core ([server] pin_cpu) pays for its
fsyncs in the core its Python runs on. Given the cores no serving process uses, the worker runs
there instead (IORING_REGISTER_IOWQ_AFF), and the loop keeps its core for requests.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..domain.errors import FerroError
from .connection import Conn, Incoming
from .http import Response
from .uring import FsyncRing

Answer = tuple[Conn, Incoming, Response]
Batches = list[list[Answer]]
Settle = Callable[[Batches, str], None]
NOT_DURABLE = "audit record could not be made durable"
NOT_RUN = frozenset({errno.ECANCELED, errno.EINTR, errno.EAGAIN, errno.EINVAL, errno.EOPNOTSUPP,
                     errno.ENOSYS})
T = TypeVar("T")
SPIN_MIN_REQUESTS = 4  # a flush fewer requests wait on is not worth a busy core
FLUSH_SPIN = 0.002  # seconds the loop may poll for a flush's completion


@dataclass(frozen=True)
class FlushPlan:
    """How the loop's groups are flushed ([audit] flush, flush_spin_microseconds,
    fsync_elsewhere): ``mode`` "auto" (io_uring where it applies) or "thread"; ``spin`` seconds
    of polling; ``cores`` the ring's kernel worker runs on (empty: wherever the loop runs)."""

    mode: str = "auto"
    spin: float = FLUSH_SPIN
    cores: frozenset[int] = frozenset()


DEFAULT_FLUSH = FlushPlan()


class Durability(Protocol):
    """The audit sink's ticket API (audit/sinkbase.py), as the dispatcher uses it."""

    def write_queued(self) -> None: ...
    def is_durable(self, ticket: Any) -> bool: ...
    def wait(self, ticket: Any) -> None: ...
    def commits_in_write(self) -> bool: ...


def newest_ticket(batches: Batches) -> Any:
    """The ticket written last (a flush that covers it covers all the others)."""
    tickets = batches[-1][-1][1].request.tickets
    assert tickets  # noqa: S101  held answers always have tickets (dispatch.py holds no other)
    return tickets[-1]


def _guarded(log: logging.Logger, step: Callable[[], T]) -> tuple[T | None, str]:
    """Run one step of a flush: (its result, NOT_DURABLE), or (None, why) when it failed. A
    flusher survives anything, or the answers it holds would wait forever."""
    try:
        return step(), NOT_DURABLE
    except FerroError as exc:
        log.error("audit flush failed: %s", exc.message)
        return None, exc.message
    except Exception:
        log.exception("audit flush failed")
        return None, NOT_DURABLE


def _fsync(fd: int) -> str | None:
    """fsync ``fd`` in this thread: None, or why it failed."""
    try:
        os.fsync(fd)
    except OSError as exc:
        return exc.strerror or "fsync failed"
    return None


class ThreadFlusher:
    """A committer thread, started with the first group."""

    def __init__(self, audit: Durability, settle: Settle, wake: Callable[[], None],
                 log: logging.Logger) -> None:
        self.audit, self.settle, self.wake, self.log = audit, settle, wake, log
        self._commits: queue.SimpleQueue[Batches | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self, batches: Batches) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="ferrohsm-audit-commit")
            self._thread.start()
        self._commits.put(batches)

    def spinning(self, now: float | None = None) -> bool:
        return False  # the loop's polling would take the GIL from the committer

    def close(self, timeout: float) -> list[Any]:
        self._commits.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return [self._thread]
        return []

    def _run(self) -> None:
        while True:
            queued = self._commits.get()
            closing = queued is None
            queued = queued or []
            while True:
                try:
                    more = self._commits.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    closing = True
                else:
                    queued.extend(more)
            if queued:
                self._flush(queued)
            if closing:
                return

    def _flush(self, queued: Batches) -> None:
        _, failure = _guarded(self.log, lambda: self.audit.wait(newest_ticket(queued)))
        self.settle(queued, failure)
        self.wake()


class RingFlusher:
    """Flushes started and finished on the event loop's thread (every method but close)."""

    def __init__(self, ring: FsyncRing, audit: Any, settle: Settle, log: logging.Logger,
                 spin: float, cores: frozenset[int] = frozenset()) -> None:
        self.ring, self.audit, self.settle, self.log, self.spin = ring, audit, settle, log, spin
        self._cores = cores  # steered (then emptied) before the loop's first fsync
        self._inflight: tuple[Batches, Any, float] | None = None
        self._queued: Batches = []  # handed over while a flush was in flight: the next one
        self._waiting = 0  # requests the flush in flight settles

    def start(self, batches: Batches) -> None:
        if self._inflight is not None:
            self._queued.extend(batches)
            return
        pending, failure = _guarded(self.log,
                                    lambda: self.audit.start_flush(newest_ticket(batches)))
        if pending is None:  # durable already, or failed before it began
            self.settle(batches, failure)
            return
        if self._cores:
            self._steer()
        try:
            self.ring.submit_fsync(pending.fd, 1)
        except OSError as exc:  # the ring refused it (no fsync ran): fsync here instead
            self.log.warning("io_uring refused an audit fsync (%s); flushing on the loop",
                             exc.strerror or exc)
            self._finish(batches, pending, _fsync(pending.fd))
            return
        self._inflight = (batches, pending, time.monotonic())
        self._waiting = sum(len(answers) for answers in batches)

    def _steer(self) -> None:
        """Send this thread's fsyncs to the spare cores: once, on the loop's thread (the worker
        pool is per submitting thread), before its first fsync starts a worker."""
        cores, self._cores = self._cores, frozenset()
        try:
            self.ring.steer_workers(cores)
        except OSError as exc:  # an older kernel, or cores outside this process's cpuset
            self.log.info("audit fsyncs run on the server's own core (io_uring: %s)",
                          exc.strerror or exc)

    def ready(self) -> None:
        """The ring's eventfd is readable: settle the flush that completed, start the next."""
        for _, result in self.ring.completions():
            if self._inflight is None:
                continue
            batches, pending, _ = self._inflight
            self._inflight, self._waiting = None, 0
            self._finish(batches, pending, self._outcome(pending.fd, result))
        if self._inflight is None and self._queued:
            queued, self._queued = self._queued, []
            self.start(queued)

    def _outcome(self, fd: int, result: int) -> str | None:
        """None when the fsync succeeded, else why it failed. An error that says the fsync did
        not run (cancelled, interrupted, refused by this kernel) is not a failed flush: fsync
        again, here. An I/O error is final (after a failed fsync the kernel may have dropped
        the dirty pages, so a second fsync would prove nothing)."""
        if result >= 0:
            return None
        if -result in NOT_RUN:
            self.log.warning("io_uring did not run an audit fsync (%s); flushing on the loop",
                             os.strerror(-result))
            return _fsync(fd)
        return os.strerror(-result)

    def busy(self) -> bool:
        return self._inflight is not None or bool(self._queued)

    def spinning(self, now: float | None = None) -> bool:
        """Whether the loop should poll rather than sleep (yielding the core: a runnable
        thread or process goes first). The clock is read only while a flush is in flight."""
        inflight = self._inflight
        if inflight is None or self._waiting < SPIN_MIN_REQUESTS:
            return False
        if (time.monotonic() if now is None else now) >= inflight[2] + self.spin:
            return False
        os.sched_yield()
        return True

    def close(self, timeout: float) -> list[Any]:
        """Wait (bounded) for the flush in flight, then release the ring."""
        deadline = time.monotonic() + timeout
        while self.busy() and time.monotonic() < deadline:
            self.ready()
            time.sleep(0.001)
        if not self.busy():
            self.ring.close()
        return []

    def _finish(self, batches: Batches, pending: Any, error: str | None) -> None:
        _, failure = _guarded(self.log, lambda: self.audit.finish_flush(pending, error))
        self.settle(batches, failure)
