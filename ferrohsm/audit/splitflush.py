"""Flushing what a sink wrote, apart from the write: the half of ChainedSink (sinkbase.py) that
makes written records durable, for whichever thread runs the flush.

``wait(ticket)`` runs the whole flush in the calling thread (``_flush_written``). The event
loop's io_uring (api/flusher.py) runs it in two halves instead: ``start_flush`` takes the flush
lock and names the fd to fsync, the kernel runs the fsync, ``finish_flush`` settles it. Both
go through ``_begin_flush`` and ``_end_flush``, so there is one flush, whoever calls it. A
backend that writes now and flushes later (``_splits_sync``: the file sink) implements the
hooks at the end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from ..domain.errors import AuditUnavailable
from .port import Ticket

log = logging.getLogger("ferrohsm.audit")


class PendingFlush:
    """A flush begun by ``start_flush``: what it covers, and the fd to fsync (None: none)."""

    __slots__ = ("fd", "started", "target", "token")

    def __init__(self, token: Any, target: tuple[int, str], started: float,
                 fd: int | None) -> None:
        self.token, self.target, self.started, self.fd = token, target, started, fd


class SplitFlush:
    """Mixed into ChainedSink, which owns the state named here."""

    durable: bool
    on_sync: Callable[[float, int], None] | None
    _committed: tuple[int, str]
    _written: tuple[int, str]
    # Re-entrant: the event loop holds it while its io_uring fsync is in flight, across turns;
    # anything on the loop that flushes meanwhile (a read's catch_up) then flushes in turn rather
    # than waiting for itself forever.
    _sync_lock: threading.RLock
    _io_lock: threading.RLock
    _failures: int
    _last_ok: bool
    _problem: str | None
    _syncs: int

    def write_queued(self) -> None:
        raise NotImplementedError

    def is_durable(self, ticket: Ticket) -> bool:
        raise NotImplementedError

    def _check_usable(self) -> None:
        raise NotImplementedError

    def _maybe_checkpoint(self) -> None:
        raise NotImplementedError

    def _flush_written(self, through: int) -> None:
        """Make the records written through seq ``through`` durable: one flush covers every
        record written before it starts, however many groups that is."""
        pending = self._begin_flush(through)
        if pending is None:
            return
        self._finish_here(pending)

    def _finish_here(self, pending: PendingFlush) -> None:
        """Run ``pending``'s flush in this thread and settle it."""
        error = None
        try:
            self._sync_storage(pending.token)
        except Exception as exc:
            error = getattr(exc, "strerror", None) or type(exc).__name__
        self._end_flush(pending, error)

    def start_flush(self, ticket: Ticket) -> PendingFlush | None:
        """``wait(ticket)`` in two halves, for a caller that runs the flush itself (the event
        loop's io_uring, api/uring.py): None when nothing is left to flush (``is_durable``
        answers), else a PendingFlush whose ``fd`` the caller fsyncs, then hands back to
        ``finish_flush``, exactly once, whatever happened. One flush at a time: a second
        ``start_flush`` (or ``wait``) waits until the first is finished."""
        if ticket.seq == 0 and ticket.error is None:
            self.write_queued()
        if self.is_durable(ticket):
            return None
        pending = self._begin_flush(ticket.seq)
        if pending is not None and pending.fd is None:  # no fd to hand out: flush it here
            self._finish_here(pending)
            return None
        return pending

    def finish_flush(self, pending: PendingFlush, error: str | None) -> None:
        """The fsync of ``pending.fd`` ended (``error``: why it failed, None: it succeeded).
        Raises AuditUnavailable when the records did not become durable."""
        self._end_flush(pending, error)

    def commits_in_write(self) -> bool:
        """Whether the event loop should leave the turn's write to the flusher's thread: a
        write that is a COMMIT (SQLite, PostgreSQL) whose last group was slow (over
        SLOW_COMMIT) or failed: a disk, a lock another node holds, a database that is slow
        (a red team: a held lock stalled the loop a timeout per turn). While commits are
        quick the loop commits itself: measured, handing every commit to the thread cost the
        PostgreSQL sink 9 % of its throughput on one core (bench/RESULTS.md)."""
        return not self._splits_sync and self._commits_slowly

    def flushes_by_caller(self) -> bool:
        """Whether ``start_flush`` hands out an fd to flush: a sink that writes now and flushes
        later, durable, whose flush is a plain fsync (FileSink)."""
        return False

    def _begin_flush(self, through: int) -> PendingFlush | None:
        """Take the flush lock and what the flush must cover; None (lock released) when the
        records are committed already or there is nothing to flush."""
        if self._committed[0] >= through or not self._splits_sync or not self.durable:
            return None  # durable already (without a split, what was written is committed)
        self._sync_lock.acquire()  # one flush at a time; writers keep writing meanwhile
        try:
            if self._committed[0] >= through:
                self._sync_lock.release()
                return None  # a flush that started after our write covered it
            with self._io_lock:
                self._check_usable()
                target = self._written
                token = self._sync_token()
        except OSError as exc:  # e.g. EMFILE: nothing was flushed, nothing is lost
            self._sync_lock.release()
            raise AuditUnavailable(
                f"audit record could not be made durable: {exc.strerror}") from None
        except BaseException:
            self._sync_lock.release()
            raise
        return PendingFlush(token, target, time.perf_counter(), self._sync_fd(token))

    def _end_flush(self, pending: PendingFlush, error: str | None) -> None:
        """Settle a flush (``error``: why it failed) and release the flush lock."""
        try:
            if error is not None:
                with self._io_lock:
                    self._failures += 1
                    self._last_ok = False
                    self._problem = f"the last audit flush failed: {error}"
                    self._sync_failed(pending.token)
                log.error("audit: flushing written records failed: %s", error)
                raise AuditUnavailable(f"audit record could not be made durable: {error}")
            self._storage_synced(pending.token)
            with self._io_lock:
                # A writer may have failed meanwhile and cut written records off: only a sink
                # still usable, whose storage is still the one we flushed, acknowledges.
                self._check_usable()
                self._after_sync()
                self._syncs += 1
                self._problem = None
                target = pending.target
                if self.on_sync is not None:
                    self.on_sync(time.perf_counter() - pending.started,
                                 target[0] - self._committed[0])
                if target[0] > self._committed[0]:
                    self._committed = target
                    self._maybe_checkpoint()
        finally:
            self._drop_token(pending.token)
            self._sync_lock.release()

    # ---- backends that can write now and flush later set _splits_sync and implement these ----
    _splits_sync: ClassVar[bool] = False
    _commits_slowly: bool  # sinkbase.ChainedSink's: its last group commit was slow or failed

    def _sync_token(self) -> Any:
        """What ``_sync_storage`` must flush to cover everything written so far (under
        _io_lock)."""
        raise NotImplementedError

    def _sync_storage(self, token: Any) -> None:
        """Flush (no lock held: writes go on meanwhile); ``_storage_synced`` follows."""
        raise NotImplementedError

    def _sync_fd(self, token: Any) -> int | None:
        """The fd whose fsync is the whole of ``_sync_storage``, None if there is none."""
        return None

    def _storage_synced(self, token: Any) -> None:
        """After a good flush of ``token`` (by ``_sync_storage`` or by the caller)."""

    def _drop_token(self, token: Any) -> None:
        """A flush of ``token`` is over, whatever its outcome: release what it holds."""

    def _after_sync(self) -> None:
        """Check, under _io_lock after a flush, that it flushed the live storage (raise
        AuditUnavailable otherwise). Default: nothing to check."""

    def _sync_failed(self, token: Any) -> None:
        """A flush failed: undo what was written but not durable, set ``_failed`` (under
        _io_lock)."""
        raise NotImplementedError

