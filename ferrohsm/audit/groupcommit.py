"""Group commit with a bounded leader: many threads share one fsync.

Why this shape (measured on a prototype): a leader that keeps flushing while records keep arriving
starves its own caller (p99 72 ms); one Condition with notify_all wakes every writer for every
group. Here each writer owns a signal; the first writer to find nobody leading becomes the leader,
flushes ONE group (at most ``max_group`` waiting items, in arrival order), wakes exactly the
writers of that group, then hands leadership to the oldest writer still queued by signalling it.
Nobody leads twice in a row unless it submits again, and nobody polls.

The signal is a bare ``threading.Lock`` used as a binary semaphore, not a ``threading.Event``:
Event.set goes through a pure-Python Condition (lock, notify, waiter bookkeeping) and measured as
the single largest GIL cost of a durable request. A writer holds its own lock while armed; waiting
is ``acquire()``; signalling is ``release()`` (one C call). Each writer is signalled exactly once
per submit (promotion or completion), so a release never meets an unlocked lock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from ..domain.errors import AuditUnavailable, FerroError

T = TypeVar("T")
R = TypeVar("R")

_WAITING, _DONE, _LEAD = 0, 1, 2


class _Signal:
    """One writer's wake-up: a lock its owner holds while armed (see the module docstring)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def clear(self) -> None:
        """Re-arm after a submit whose signal was consumed by someone else's release."""
        self._lock.acquire(blocking=False)

    def wait(self) -> None:
        self._lock.acquire()  # returns once signalled; leaves the signal armed again

    def set(self) -> None:
        self._lock.release()


class _Waiter(Generic[T, R]):
    __slots__ = ("error", "event", "item", "result", "state")

    def __init__(self, item: T, event: _Signal) -> None:
        self.item = item
        self.event = event
        self.state = _WAITING
        self.result: R | None = None
        self.error: str | None = None


class GroupCommit(Generic[T, R]):
    """Serialises ``flush(items) -> results`` calls and batches the items waiting meanwhile.

    ``flush`` runs in the leader's thread, one call at a time, and must return one result per item
    in order. If it raises, every writer of that group gets a fresh ``AuditUnavailable`` (a new
    exception per thread, so tracebacks are not shared between threads).
    """

    def __init__(self, flush: Callable[[list[T]], list[R]], max_group: int = 256) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self._flush = flush
        self._max = max_group
        self._lock = threading.Lock()
        self._queue: deque[_Waiter[T, R]] = deque()
        self._leading = False
        self._local = threading.local()  # one reusable _Signal per writer thread
        self.groups = 0  # flushes performed; with ``items`` it shows how well fsyncs are shared
        self.items = 0

    def submit(self, item: T) -> R:
        """Return ``item``'s result once its group has been flushed; raise if the flush failed."""
        event: _Signal | None = getattr(self._local, "event", None)
        if event is None:
            event = self._local.event = _Signal()
        # Armed again: signalled at most twice per submit (promotion, then our own completion
        # when we lead), and a promotion is always consumed by our wait() first.
        event.clear()
        waiter: _Waiter[T, R] = _Waiter(item, event)
        with self._lock:
            self._queue.append(waiter)
            lead = not self._leading
            self._leading = True
        if not lead:
            waiter.event.wait()
        if waiter.state != _DONE:  # we were the first, or promoted by the previous leader
            self._lead()
        if waiter.error is not None:
            raise AuditUnavailable(waiter.error)
        return waiter.result  # type: ignore[return-value]

    def _lead(self) -> None:
        with self._lock:
            group = [self._queue.popleft() for _ in range(min(self._max, len(self._queue)))]
        try:
            results = self._flush([w.item for w in group])
            if len(results) != len(group):
                raise RuntimeError("flush returned the wrong number of results")
            for waiter, result in zip(group, results):
                waiter.result = result
        except BaseException as exc:
            reason = exc.message if isinstance(exc, FerroError) else "audit write failed"
            for waiter in group:
                waiter.error = reason
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt and friends; the finally still hands over
        finally:
            self.groups += 1
            self.items += len(group)
            for waiter in group:
                waiter.state = _DONE
            self._hand_over()  # first, so the next group's flush starts while we wake this one
            for waiter in group:
                waiter.event.set()

    def _hand_over(self) -> None:
        with self._lock:
            if self._queue:
                successor = self._queue[0]
                successor.state = _LEAD
                successor.event.set()
            else:
                self._leading = False
