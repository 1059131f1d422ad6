"""The ApprovalStore contract (ferrohsm/store/approvals.py), run against every implementation.

A new approval store is done when this suite passes against it: add it to ``OPENERS``. Expected
results come from the pure model (``effective_state``), never from another store.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pgserver
import pytest
from backends import Backend as GenericBackend
from backends import serve_backend

from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.domain import approval as apv
from ferrohsm.domain.approval import Approval, ApprovalState
from ferrohsm.domain.errors import Conflict, NotFound, StaleRevision, StoreError
from ferrohsm.domain.ids import uuid7
from ferrohsm.domain.model import Principal, Role
from ferrohsm.store.approvalmac import ApprovalCodec
from ferrohsm.store.approvalstore import ApprovalStore
from ferrohsm.store.memory_approvals import MemoryApprovalStore
from ferrohsm.store.pgdb import PgDatabase
from ferrohsm.store.postgres_approvals import PostgresApprovalStore
from ferrohsm.store.sqlite_approvals import SQLiteApprovalStore

CODEC = ApprovalCodec(RecordMac.for_approvals(b"a" * 32))  # the approval records' MAC


NOW = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)
KEY = "01890a5d-ac96-774b-bcce-b302099a8057"
OTHER_KEY = "01890a5d-ac96-774b-bcce-b302099a8058"
BOB, CAROL = Principal("bob", Role.OPERATOR), Principal("carol", Role.ADMINISTRATOR)


Backend = GenericBackend[ApprovalStore]


def openers(tmp_path: Path) -> dict[str, tuple[bool, Callable[[], ApprovalStore]]]:
    return {"memory": (False, MemoryApprovalStore),
            "sqlite": (True, lambda: SQLiteApprovalStore(
                tmp_path / "data" / "approvals.sqlite3", CODEC))}


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "postgres":  # a fresh schema on the session's server (skips without)
        dsn = pgserver.shared().new_schema()
        opener: Callable[[], ApprovalStore] = lambda: PostgresApprovalStore(PgDatabase(dsn),
                                                                            CODEC)
        yield from serve_backend("postgres", True, opener)
        return
    yield from serve_backend(request.param, *openers(tmp_path)[request.param])


@pytest.fixture
def store(backend: Backend) -> ApprovalStore:
    return backend.open()


_ms = iter(range(10**9))


def make(*, key_id: str = KEY, action: str = "key.destroy", ttl: timedelta = timedelta(hours=1),
         created: datetime = NOW) -> Approval:
    """A pending approval; ids increase with each call (UUIDv7 over a counter)."""
    return apv.new_approval(approval_id=uuid7(1_800_000_000_000 + next(_ms)), action=action,
                            key_id=key_id, args={"n": 1}, salt=os.urandom(16),
                            requester="alice", required=2, now=created, expires_at=created + ttl)


def approved(store: ApprovalStore, a: Approval) -> Approval:
    a = store.swap(apv.vote(a, BOB, True, NOW))
    return store.swap(apv.vote(a, CAROL, True, NOW))


# ---- create / get / delete ------------------------------------------------------------------

def test_create_get_round_trip(store: ApprovalStore) -> None:
    a = apv.vote(make(), BOB, True, NOW, "looks right ✓")
    created = store.create(replace(a, revision=9))
    assert created == replace(a, revision=1)
    assert store.get(a.id) == created


def test_duplicate_ids_and_missing_ids(store: ApprovalStore) -> None:
    a = store.create(make())
    with pytest.raises(Conflict):
        store.create(replace(a, revision=0))
    for missing in ("0190a5d0-0000-7000-8000-00000000dead", "", "x'; DROP TABLE approvals;--"):
        with pytest.raises(NotFound):
            store.get(missing)
        with pytest.raises(NotFound):
            store.delete(missing)
    store.delete(a.id)
    with pytest.raises(NotFound):
        store.get(a.id)


# ---- compare-and-swap -----------------------------------------------------------------------

def test_swap_is_compare_and_swap(store: ApprovalStore) -> None:
    a = store.create(make())
    voted = store.swap(apv.vote(a, BOB, True, NOW))
    assert voted.revision == 2 and store.get(a.id) == voted
    with pytest.raises(StaleRevision):
        store.swap(apv.vote(a, CAROL, True, NOW))  # built from the stale revision 1
    assert store.get(a.id).approvers == ("bob",)
    with pytest.raises(NotFound):
        store.swap(make())


def test_concurrent_consumers_exactly_one_wins(store: ApprovalStore) -> None:
    a = approved(store, store.create(make()))
    barrier, wins, losses = threading.Barrier(12), [], []

    def consume() -> None:
        current = store.get(a.id)
        barrier.wait()
        try:
            store.swap(apv.redeem(current, "alice", "key.destroy", KEY, {"n": 1}, NOW))
            wins.append(1)
        except StaleRevision:
            losses.append(1)
    threads = [threading.Thread(target=consume) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 11
    assert store.get(a.id).state is ApprovalState.EXECUTED


def _alices(row: Approval) -> bool:
    """``make()``'s request: alice, key.destroy on KEY with {"n": 1}."""
    return row.requester == "alice" and apv.binds(row, row.action, row.key_id, {"n": 1})


def test_create_once_parks_one_of_identical_requests_made_at_once(backend: Backend) -> None:
    """Twelve identical requests parked at once (two connections to the store, as two
    processes or nodes have) make one approval; every caller is given that one."""
    first = backend.open()
    stores = [first, backend.open() if backend.persistent else first]  # memory: one store
    barrier, got = threading.Barrier(12), []

    def park(i: int) -> None:
        fresh = make()
        barrier.wait()
        got.append(stores[i % 2].create_once(fresh, NOW, _alices).id)
    threads = [threading.Thread(target=park, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 12 and len(set(got)) == 1
    assert [a.id for a in stores[0].list(ApprovalState.PENDING, NOW)] == got[:1]


def test_create_once_counts_only_open_twins(store: ApprovalStore) -> None:
    first = store.create_once(make(), NOW, _alices)
    assert store.create_once(make(), NOW, _alices) == first
    assert store.create_once(make(key_id=OTHER_KEY), NOW, _alices).id != first.id
    assert store.create_once(make(action="key.rotate"), NOW, _alices).id != first.id
    assert store.create_once(make(), NOW, lambda row: False).id != first.id  # not the same
    later = NOW + timedelta(hours=2)  # every one of them has expired: a new one is made
    fresh = make(created=later)
    assert store.create_once(fresh, later, _alices).id == fresh.id
    done = store.swap(apv.vote(store.get(fresh.id), BOB, False, later))  # finished: no twin
    assert done.state is ApprovalState.DENIED
    again = make(created=later)
    assert store.create_once(again, later, _alices).id == again.id


# ---- listing by effective state -------------------------------------------------------------

def test_list_filters_on_the_effective_state(store: ApprovalStore) -> None:
    pending = store.create(make())
    short = store.create(make(ttl=timedelta(minutes=1)))
    ok = approved(store, store.create(make()))
    done = store.swap(apv.redeem(approved(store, store.create(make())), "alice", "key.destroy",
                                 KEY, {"n": 1}, NOW))
    denied = store.swap(apv.vote(store.create(make()), BOB, False, NOW))
    everything = [pending, short, ok, done, denied]
    for when in (NOW, NOW + timedelta(minutes=5), NOW + timedelta(hours=2)):
        for state in [None, *ApprovalState]:
            expected = [a.id for a in everything
                        if state is None or apv.effective_state(a, when) is state]
            assert [a.id for a in store.list(state, when)] == expected, (state, when)


def test_list_pages_in_id_order(store: ApprovalStore) -> None:
    made = [store.create(make()).id for _ in range(7)]
    seen: list[str] = []
    after = None
    while True:
        page = store.list(ApprovalState.PENDING, NOW, 3, after)
        seen += [a.id for a in page]
        if len(page) < 3:
            break
        after = page[-1].id
    assert seen == made


def test_expiring_lists_open_approvals_past_their_window(store: ApprovalStore) -> None:
    soon = store.create(make(ttl=timedelta(minutes=1)))
    approved(store, soon)
    store.create(make(ttl=timedelta(hours=5)))
    gone = store.swap(apv.vote(store.create(make(ttl=timedelta(minutes=1))), BOB, False, NOW))
    assert store.expiring(NOW) == []
    due = store.expiring(NOW + timedelta(minutes=1))
    assert [a.id for a in due] == [soon.id] and gone.id not in [a.id for a in due]
    store.swap(apv.expire(store.get(soon.id), NOW + timedelta(minutes=1)))
    assert store.expiring(NOW + timedelta(minutes=2)) == []


def test_latest_executed(store: ApprovalStore) -> None:
    assert store.latest_executed(KEY, "key.destroy") is None
    ids = []
    for minutes in (1, 3, 2):
        a = approved(store, store.create(make()))
        when = NOW + timedelta(minutes=minutes)
        ids.append(store.swap(apv.redeem(a, "alice", "key.destroy", KEY, {"n": 1}, when)).id)
    approved(store, store.create(make()))  # approved, never executed
    store.create(make(key_id=OTHER_KEY))
    found = store.latest_executed(KEY, "key.destroy")
    assert found is not None and found.id == ids[1]
    assert store.latest_executed(KEY, "key.rollback") is None
    assert store.latest_executed(OTHER_KEY, "key.destroy") is None


# ---- retention ------------------------------------------------------------------------------

def test_prune_removes_only_old_finished_approvals(store: ApprovalStore) -> None:
    old_open = store.create(make(ttl=timedelta(days=400)))
    old_denied = store.swap(apv.vote(store.create(make()), BOB, False, NOW))
    old_expired = store.swap(apv.expire(store.create(make()), NOW + timedelta(hours=1)))
    long_lived = store.create(make(ttl=timedelta(days=50)))
    fresh_done = store.swap(apv.redeem(approved(store, long_lived), "alice",
                                       "key.destroy", KEY, {"n": 1}, NOW + timedelta(days=40)))
    assert store.prune(NOW + timedelta(days=30)) == 2
    left = {a.id for a in store.list(None, NOW)}
    assert left == {old_open.id, fresh_done.id}
    assert old_denied.id not in left and old_expired.id not in left
    assert store.prune(NOW + timedelta(days=30)) == 0


# ---- durability -----------------------------------------------------------------------------

def test_approvals_survive_reopening(backend: Backend) -> None:
    if not backend.persistent:
        pytest.skip("the memory store keeps nothing across restarts by design")
    first = backend.open()
    a = first.swap(apv.vote(first.create(make()), BOB, True, NOW))
    first.close()
    again = backend.open()
    assert again.get(a.id) == a
    assert [x.id for x in again.list(ApprovalState.PENDING, NOW)] == [a.id]


def test_sqlite_file_is_private_and_durable(tmp_path: Path) -> None:
    path = tmp_path / "d" / "approvals.sqlite3"
    store = SQLiteApprovalStore(path, CODEC)
    try:
        store.create(make())
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        conn = store._conn  # the pragmas the durability claim rests on
        assert conn is not None
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()
    os.chmod(path, 0o644)
    SQLiteApprovalStore(path, CODEC).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    link = tmp_path / "d" / "link.sqlite3"
    link.symlink_to(path)
    with pytest.raises(StoreError):
        SQLiteApprovalStore(link, CODEC)


def _rewrite(store: ApprovalStore, approval_id: str, edit: Callable[[dict[str, object]], None]
             ) -> None:
    """What someone who can write the database (not the secrets) does to a stored record."""
    import json
    sql = "UPDATE approvals SET record = {0}, state = 'approved' WHERE id = {0}"
    if isinstance(store, SQLiteApprovalStore):
        conn = store._conn
        assert conn is not None
        record = json.loads(conn.execute("SELECT record FROM approvals WHERE id = ?",
                                         (approval_id,)).fetchone()[0])
        edit(record)
        conn.execute(sql.format("?"), (json.dumps(record), approval_id))
        conn.commit()
        return
    assert isinstance(store, PostgresApprovalStore)
    rows = store._db.run(lambda c: c.execute("SELECT record FROM approvals WHERE id = %s",
                                             (approval_id,)).fetchall(), "read", transaction=False)
    record = json.loads(rows[0][0])
    edit(record)
    store._db.run(lambda c: c.execute(sql.format("%s"), (json.dumps(record), approval_id)),
                  "write", transaction=False)


def test_a_record_changed_in_the_database_is_refused(backend: Backend) -> None:
    """Approving by writing the database (a forged vote, the state flipped) or stripping the
    MAC: the approval cannot be read, and listings leave it out (rule: state that decides
    access is authenticated wherever it is stored)."""
    from ferrohsm.domain.errors import IntegrityError
    if not backend.persistent:
        pytest.skip("the memory store is the process's own memory")
    store = backend.open()
    try:
        forged, stripped, kept = (store.create(make()) for _ in range(3))

        def approve(record: dict[str, object]) -> None:
            record["state"] = "approved"
            record["votes"] = [{"approver": "mallory", "role": "operator", "approve": True,
                                "at": "2026-01-01T00:00:00Z", "comment": None}]
        _rewrite(store, forged.id, approve)
        def strip(record: dict[str, object]) -> None:
            del record["mac"]
        _rewrite(store, stripped.id, strip)
        for bad in (forged, stripped):
            with pytest.raises(IntegrityError, match="failed its integrity check"):
                store.get(bad.id)
        listed = [a.id for a in store.list(None, NOW)]
        assert kept.id in listed and forged.id not in listed and stripped.id not in listed
        assert store.get(kept.id) == kept
        # only the indexed column changed: listings go by the authenticated record
        _rewrite(store, kept.id, lambda record: None)
        assert kept.id not in [a.id for a in store.list(ApprovalState.APPROVED, NOW)]
        assert store.get(kept.id).state is ApprovalState.PENDING
    finally:
        store.close()
