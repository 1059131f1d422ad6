"""The pieces processes and nodes share, each against its real medium: flock on files in one
directory, one SQLite file, one PostgreSQL database (started by the test; skipped where the
server is not installed). Two objects stand for two processes: each has its own descriptors and
connections, exactly as two processes would.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ferrohsm.auth.denylist import DenyList
from ferrohsm.auth.ratelimit import Limit, RateLimiter, RateLimitPolicy
from ferrohsm.auth.sharedlimit import ClusterLimits, UsageExchange
from ferrohsm.domain.errors import RateLimited, Unavailable
from ferrohsm.store.nodelock import FileLeader, FileMembership
from ferrohsm.store.sqlite_usage import SQLiteUsage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: pgserver.py


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[Callable[[], str]]:
    import pgserver
    pgserver.skip_unless_available()
    with pgserver.running() as server:
        yield server.new_database


# ---- the deny-list ----------------------------------------------------------------------------

def test_two_processes_revoking_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    a, b = DenyList(path), DenyList(path)
    for i in range(10):  # interleaved: each writes without having read the other's last entry
        a.revoke(f"a{i}", until=9999.0, now=1000.0)
        b.revoke(f"b{i}", until=9999.0, now=1000.0)
    stored = json.loads(path.read_text())["revoked"]
    assert set(stored) == {f"{p}{i}" for p in "ab" for i in range(10)}
    fresh = DenyList(path)
    assert all(fresh.is_revoked(jti, 1000.0) for jti in stored)


def test_a_revocation_is_honoured_by_another_process_at_once(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    reader, writer = DenyList(path), DenyList(path)
    assert not reader.is_revoked("x", 1000.0)
    writer.revoke("x", until=9999.0, now=1000.0)
    assert reader.is_revoked("x", 1000.0)  # same instant: no check interval to wait out


def test_a_local_revoke_in_progress_does_not_hide_another_processs(tmp_path: Path) -> None:
    """A process writing a revocation of its own (its writer lock held through the flock and
    the fsync) answered every request meanwhile from its list as it was, so a token another
    process had just revoked, and acknowledged, was accepted (an outside tester: 93 of 2,786
    tokens with six threads revoking at once through two processes)."""
    path = tmp_path / "revoked.json"
    reader, writer = DenyList(path), DenyList(path)
    with reader._lock:  # a revoke of the reader's own process, writing
        writer.revoke("x", until=9999.0, now=1000.0)
        assert reader.is_revoked("x", 1000.0)


def test_a_check_during_another_threads_reread_waits_for_it(tmp_path: Path) -> None:
    """A thread re-reading a large list took the counter's new value before the read, so a
    second thread saw nothing new and answered from the list as it was: a token revoked (and
    acknowledged) by another process was accepted while the file was being read."""
    path = tmp_path / "revoked.json"
    reader, writer = DenyList(path), DenyList(path)
    writer.revoke("x", until=9999.0, now=1000.0)
    real, reading, release = reader._read, threading.Event(), threading.Event()

    def slow_read() -> dict[str, float]:
        reading.set()
        release.wait(5)
        return real()
    reader._read = slow_read  # type: ignore[method-assign]
    first = threading.Thread(target=reader.is_revoked, args=("other", 1000.0))
    first.start()
    assert reading.wait(5)
    reader._read = real  # type: ignore[method-assign]
    answers: list[bool] = []
    second = threading.Thread(target=lambda: answers.append(reader.is_revoked("x", 1000.0)))
    second.start()
    time.sleep(0.05)  # the second check is under way while the first read is not done
    release.set()
    first.join(5)
    second.join(5)
    assert answers == [True]


def test_a_write_merges_the_file_even_when_it_looks_unchanged(tmp_path: Path) -> None:
    """A file renamed into place in the same clock tick, with the same size, on a reused inode
    has the same (mtime, size, inode): a write that trusted that to skip the merge dropped the
    other process's entry from the file."""
    path = tmp_path / "revoked.json"
    a, b = DenyList(path), DenyList(path)
    b.revoke("from-b", until=9999.0, now=1000.0)
    a._seen = a._stat()  # as if the stat had not changed
    a.revoke("from-a", until=9999.0, now=1000.0)
    assert set(json.loads(path.read_text())["revoked"]) == {"from-a", "from-b"}


# ---- the rate limits --------------------------------------------------------------------------

def limiter() -> RateLimiter:
    return RateLimiter(RateLimitPolicy(default=Limit(10.0, 10)))


def spend(lim: RateLimiter, n: int, now: float) -> int:
    """How many of ``n`` requests of actor ``svc`` the limiter admits at ``now``."""
    admitted = 0
    for _ in range(n):
        try:
            lim.take_actor("svc", "service", now)
            admitted += 1
        except RateLimited:
            pass
    return admitted


def run_two_nodes(usage: Callable[[], UsageExchange]) -> None:
    a, b = limiter(), limiter()
    clock = [100.0]
    sync_a = ClusterLimits(a, usage(), clock=lambda: clock[0], wall=lambda: 1.0e9 + clock[0])
    sync_b = ClusterLimits(b, usage(), clock=lambda: clock[0], wall=lambda: 1.0e9 + clock[0])
    sync_a.sync()
    sync_b.sync()  # both have a baseline
    assert spend(a, 10, clock[0]) == 10  # the whole burst, on node A
    sync_a.sync()  # A publishes
    sync_b.sync()  # B is debited
    assert spend(b, 5, clock[0]) == 0, "node B admitted what node A already spent"
    clock[0] += 0.5  # both refill 5 tokens; together they may spend 5, not 10
    assert spend(b, 3, clock[0]) == 3
    sync_b.sync()
    sync_a.sync()
    assert spend(a, 5, clock[0]) == 2
    sync_a.usage.close()
    sync_b.usage.close()


def test_nodes_share_an_actors_rate_limit_through_sqlite(tmp_path: Path) -> None:
    run_two_nodes(lambda: SQLiteUsage(tmp_path / "ratelimit.sqlite3"))


def test_nodes_share_an_actors_rate_limit_through_postgres(pg_dsn: Callable[[], str]) -> None:
    from ferrohsm.store.pg_shared import PostgresUsage
    dsn = pg_dsn()
    run_two_nodes(lambda: PostgresUsage(dsn))


def test_a_node_that_cannot_exchange_keeps_its_spending_for_later(tmp_path: Path) -> None:
    a, b = limiter(), limiter()
    usage_a = SQLiteUsage(tmp_path / "ratelimit.sqlite3")
    sync_a, sync_b = ClusterLimits(a, usage_a), ClusterLimits(b, SQLiteUsage(tmp_path / "ratelimit.sqlite3"))
    sync_a.sync()
    sync_b.sync()
    assert spend(a, 10, 1.0) == 10
    usage_a.close()
    sync_a.sync()  # fails: the database is closed; the spending stays pending
    assert sync_a.syncs == 1
    sync_a.usage = SQLiteUsage(tmp_path / "ratelimit.sqlite3")
    sync_a.sync()
    sync_b.sync()
    assert spend(b, 1, 1.0) == 0


# ---- leader and membership --------------------------------------------------------------------

def test_one_scheduler_leader_at_a_time_and_the_lock_is_handed_over(tmp_path: Path) -> None:
    first, second = FileLeader(tmp_path), FileLeader(tmp_path)
    assert first.is_leader() and not second.is_leader()
    assert first.is_leader()  # still held
    first.close()  # the leader dies: the kernel drops its lock
    assert second.is_leader()
    second.close()


def test_postgres_leader_is_one_at_a_time(pg_dsn: Callable[[], str]) -> None:
    from ferrohsm.store.pg_shared import PostgresLeader
    dsn = pg_dsn()
    first, second = PostgresLeader(dsn), PostgresLeader(dsn)
    assert first.is_leader() and not second.is_leader()
    first.close()  # the server ends the session (and drops its locks) just after the close
    deadline = time.monotonic() + 10
    while not second.is_leader():  # as a later tick of the scheduler would
        assert time.monotonic() < deadline, "the lock was not handed over"
        time.sleep(0.05)
    second.close()


def check_membership(make: Callable[[], Any]) -> None:
    first = make()
    assert first.enter() is True  # nobody alive: the cold start runs the checks
    first.started()
    second = make()
    assert second.enter() is False  # joins a live node
    second.started()
    first.close()
    second.close()
    deadline = time.monotonic() + 10
    while True:  # everyone is gone: cold again (PostgreSQL ends the sessions just after)
        third = make()
        cold = third.enter()
        third.started()
        third.close()
        if cold:
            break
        assert time.monotonic() < deadline, "still not a cold start"
        time.sleep(0.05)


def test_file_membership_tells_a_cold_start_from_a_join(tmp_path: Path) -> None:
    check_membership(lambda: FileMembership(tmp_path))


def test_postgres_membership_tells_a_cold_start_from_a_join(pg_dsn: Callable[[], str]) -> None:
    from ferrohsm.store.pg_shared import PostgresMembership
    dsn = pg_dsn()
    check_membership(lambda: PostgresMembership(dsn))


def check_waiting_is_said(make: Callable[[Callable[[], None]], Any]) -> None:
    """A start (or a restore) behind another one's turn is told before it waits, once; one
    that finds the turn free is told nothing."""
    said: list[str] = []
    first = make(lambda: said.append("first"))
    assert first.enter() is True and said == []
    second = make(lambda: said.append("second"))
    entered = threading.Thread(target=second.enter)
    entered.start()
    deadline = time.monotonic() + 10
    while not said:
        assert time.monotonic() < deadline, "the waiting one was not told"
        time.sleep(0.02)
    assert said == ["second"] and entered.is_alive()  # told, and still waiting
    first.started()  # the turn is free
    entered.join(10)
    assert not entered.is_alive() and said == ["second"]
    second.started()
    first.close()
    second.close()


def test_file_membership_says_when_it_waits(tmp_path: Path) -> None:
    check_waiting_is_said(lambda told: FileMembership(tmp_path, told))


def test_postgres_membership_says_when_it_waits(pg_dsn: Callable[[], str]) -> None:
    from ferrohsm.store.pg_shared import PostgresMembership
    dsn = pg_dsn()
    check_waiting_is_said(lambda told: PostgresMembership(dsn, told))



def test_a_list_that_cannot_be_read_is_not_written_over(tmp_path: Path) -> None:
    """Writing the list from memory over a file that cannot be read would drop what other
    processes revoked: the revocation is refused (and in force in this process)."""
    path = tmp_path / "revoked.json"
    deny = DenyList(path)
    deny.revoke("first", until=9999.0, now=1000.0)
    path.write_text("{not json")
    with pytest.raises(Unavailable):
        deny.revoke("second", until=9999.0, now=1000.0)
    assert path.read_text() == "{not json"
    assert deny.is_revoked("second", 1000.0) and deny.is_revoked("first", 1000.0)


def test_an_offline_reader_is_alone_and_a_starting_node_waits_for_it(tmp_path: Path) -> None:
    """``alone``: refused (False) beside a live node; else held for the whole block, so a
    node started meanwhile waits on startup.lock instead of reconciling beside the reader."""
    import threading

    from ferrohsm.store.nodelock import alone
    live = FileMembership(tmp_path)
    assert live.enter()
    live.started()
    with alone(tmp_path) as ok:
        assert ok is False
    live.close()
    entered: list[bool] = []
    later = FileMembership(tmp_path)
    with alone(tmp_path) as ok:
        assert ok is True
        starter = threading.Thread(target=lambda: entered.append(later.enter()))
        starter.start()
        starter.join(0.5)
        assert starter.is_alive() and not entered  # waits for the reader
    starter.join(5)
    later.close()
    assert entered == [True]  # then starts cold, alone


def test_a_node_let_in_as_an_offline_reader_ends_starts_cold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader lets go of nodes.lock before startup.lock: a node let through startup.lock
    while nodes.lock was still held would have taken itself for warm and skipped its checks.
    The pause after each close widens the window a scheduler leaves to chance."""
    from ferrohsm.store import nodelock
    real_close = os.close

    def slow_close(fd: int) -> None:
        real_close(fd)
        time.sleep(0.3)

    entered: list[bool] = []
    later = FileMembership(tmp_path)
    with nodelock.alone(tmp_path) as ok:
        assert ok is True
        starter = threading.Thread(target=lambda: entered.append(later.enter()))
        starter.start()
        starter.join(0.2)
        monkeypatch.setattr(os, "close", slow_close)
    monkeypatch.undo()
    starter.join(5)
    later.close()
    assert entered == [True]
