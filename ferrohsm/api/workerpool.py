"""A small bounded thread pool for the requests the event loop must not run itself.

Why not ``concurrent.futures.ThreadPoolExecutor``: its threads are not named after us (the tests
and operators find ours by the ``ferrohsm-`` prefix), it joins at interpreter exit rather than
within a grace period, and it wraps every call in a Future the loop has no use for: a worker here
runs ``job()`` and the job itself hands its result back to the loop.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

Job = Callable[[], None]
log = logging.getLogger("ferrohsm.http")


class WorkerPool:
    """Up to ``size`` threads, started on demand, running jobs in submission order."""

    def __init__(self, size: int, name: str = "ferrohsm-worker") -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one thread")
        self.size, self.name = size, name
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("worker pool is closed")
            if self._idle <= 0 and len(self._threads) < self.size:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"{self.name}-{len(self._threads) + 1}")
                self._threads.append(thread)
                self._idle += 1
                thread.start()
            self._idle -= 1
        self._jobs.put(job)

    def close(self, timeout: float) -> list[threading.Thread]:
        """Stop every thread after its current job; those still running after ``timeout``
        (stuck in application code, which Python cannot interrupt) are returned."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [thread for thread in threads if thread.is_alive()]

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # a job reports its own errors; this is the last line of defence
                log.exception("worker job failed")
            finally:
                with self._lock:
                    self._idle += 1
