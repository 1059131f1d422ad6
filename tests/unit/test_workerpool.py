"""The server's worker pool: threads start on demand up to the bound, jobs keep their order on
one thread, a failing job costs nothing else, and close() joins (or reports) every thread."""

from __future__ import annotations

import threading
import time

import pytest

from ferrohsm.api.workerpool import WorkerPool


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("test-pool")]


def test_threads_start_on_demand_up_to_the_bound() -> None:
    pool = WorkerPool(3, name="test-pool")
    release, started = threading.Event(), threading.Semaphore(0)

    def job() -> None:
        started.release()
        release.wait(5)

    for _ in range(5):
        pool.submit(job)
    for _ in range(3):
        assert started.acquire(timeout=2)
    assert not started.acquire(timeout=0.2)  # the other two wait for a free thread
    assert len(pool_threads()) == 3
    release.set()
    for _ in range(2):
        assert started.acquire(timeout=2)
    assert pool.close(2) == []
    assert pool_threads() == []


def test_idle_thread_is_reused_and_failures_are_contained() -> None:
    pool = WorkerPool(4, name="test-pool")
    done: list[int] = []
    pool.submit(lambda: done.append(1))
    deadline = time.monotonic() + 2
    while not done and time.monotonic() < deadline:
        time.sleep(0.01)

    def boom() -> None:
        raise RuntimeError("a bug in one job")

    pool.submit(boom)
    pool.submit(lambda: done.append(2))
    assert pool.close(2) == []
    assert done == [1, 2] and pool_threads() == []


def test_close_reports_a_stuck_handler_and_refuses_new_jobs() -> None:
    pool = WorkerPool(1, name="test-pool")
    release = threading.Event()

    def job() -> None:
        release.wait(5)

    pool.submit(job)
    time.sleep(0.05)
    stuck = pool.close(0.1)
    assert len(stuck) == 1
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)
    release.set()
    stuck[0].join(2)
    assert pool_threads() == []
