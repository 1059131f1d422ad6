"""SQLiteStore specifics: durability settings, file modes, schema migrations, the query plans that
keep filters indexed, several connections on one file, and corrupted rows. The shared contract
is in tests/conformance."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.errors import IntegrityError, NotFound, StaleRevision, StoreError
from ferrohsm.domain.model import Key, KeyFilter, KeyState, key_to_record
from ferrohsm.store import sqlite as sqlite_module
from ferrohsm.store.sqlite import SCHEMA_VERSION, SQLiteStore, _select, migrate

MAC = RecordMac.derive(bytes(32))  # record MACs under a test master key
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def make_key(name: str | None = None, tags: tuple[str, ...] = ()) -> Key:
    return lc.new_key(key_id=str(uuid.uuid4()), name=name, description="", algorithm="aes-256-gcm",
                      usage="encrypt", tags=tags, sealed=b"\x00sealed\xff", now=NOW, actor="alice")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "private" / "keys.sqlite3"


@pytest.fixture
def store(path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(path, MAC)
    yield opened
    opened.close()


def test_wal_synchronous_full_and_foreign_keys(store: SQLiteStore) -> None:
    health = store.describe()
    assert health["journal_mode"] == "wal"
    assert health["synchronous"] == 2  # FULL
    assert health["foreign_keys"] == 1
    assert health["user_version"] == SCHEMA_VERSION


def test_file_modes(store: SQLiteStore, path: Path) -> None:
    store.create(make_key("k"))  # makes SQLite create -wal and -shm
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        assert stat.S_IMODE(os.stat(file).st_mode) == 0o600, file


def test_a_loose_database_file_is_tightened(path: Path) -> None:
    path.parent.mkdir(mode=0o700)
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    SQLiteStore(path, MAC).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_symlinked_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real.sqlite3").touch()
    (tmp_path / "link.sqlite3").symlink_to(tmp_path / "real.sqlite3")
    with pytest.raises(StoreError, match="symlink"):
        SQLiteStore(tmp_path / "link.sqlite3", MAC)


# ---- migrations ----------------------------------------------------------------------------

def _v1_database(path: Path, keys: list[Key]) -> None:
    """A database as version 1 of the schema left it (tags only inside the JSON record)."""
    path.parent.mkdir(mode=0o700)
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, target=1) == 1
    for key in keys:
        conn.execute("INSERT INTO keys (id, name, state, algorithm, usage, revision, record) "
                     "VALUES (?, ?, ?, ?, ?, 1, ?)",
                     (key.id, key.name, key.state.value, key.algorithm, key.usage,
                      json.dumps(key_to_record(key))))
    conn.close()


def test_an_older_schema_is_migrated_in_place(path: Path) -> None:
    keys = [make_key("a", ("pci", "prod")), make_key("b", ("prod",)), make_key(None)]
    _v1_database(path, keys)
    store = SQLiteStore(path, MAC)
    try:
        assert store.describe()["user_version"] == SCHEMA_VERSION
        assert store.record_census() == (0, 3)  # version 1 wrote records without a MAC
        assert store.authenticate_legacy_records() == 3  # what the start-up migration does
        tagged = [k.id for k in store.list(KeyFilter(tag="prod")).keys]
        assert tagged == sorted(k.id for k in keys[:2])
        assert store.count(KeyFilter(tag="pci")) == 1
        assert store.get_by_name("a").tags == ("pci", "prod")
    finally:
        store.close()


def test_migrating_twice_is_harmless(path: Path) -> None:
    SQLiteStore(path, MAC).close()
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn) == SCHEMA_VERSION
    conn.close()


def test_a_failed_migration_changes_nothing(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    SQLiteStore(path, MAC).close()
    broken = "CREATE TABLE half_done (x INTEGER); INSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", (*sqlite_module.MIGRATIONS, broken))
    with pytest.raises(StoreError, match=f"migration to version {SCHEMA_VERSION + 1} failed"):
        SQLiteStore(path, MAC)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half_done'"
                        ).fetchone()[0] == 0
    conn.close()


def test_a_newer_schema_is_refused(path: Path) -> None:
    SQLiteStore(path, MAC).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(path, MAC)


# ---- query plans ---------------------------------------------------------------------------

def _plan(store: SQLiteStore, filters: KeyFilter) -> str:
    sql, args = _select("k.id, k.record", filters, str(uuid.uuid4()))
    conn = store._connection()
    return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql} LIMIT 5", args))


def test_filters_walk_indexes_in_id_order(store: SQLiteStore) -> None:
    assert "SEARCH t USING PRIMARY KEY (tag=? AND key_id>?)" in _plan(store, KeyFilter(tag="x"))
    assert "keys_by_state (state=? AND id>?)" in _plan(store, KeyFilter(state=KeyState.ACTIVE))
    for filters in (KeyFilter(), KeyFilter(tag="x"), KeyFilter(state=KeyState.ACTIVE)):
        assert "TEMP B-TREE" not in _plan(store, filters)  # no sort step


# ---- several connections (threads in other processes) on one file -------------------------

def test_cas_and_caches_hold_across_connections(path: Path) -> None:
    one, two = SQLiteStore(path, MAC), SQLiteStore(path, MAC)
    try:
        key = one.create(make_key("shared"))
        assert two.get(key.id) == key and one.get(key.id) == key  # both cached now
        revoked = two.update(lc.revoke(key, NOW, "bob"))
        assert one.get(key.id) == revoked  # the other connection's commit flushed one's cache
        with pytest.raises(StaleRevision):
            one.update(lc.rotate(key, b"v2", NOW, "alice"))
    finally:
        one.close()
        two.close()


def test_a_turn_checks_for_other_connections_commits_once(path: Path) -> None:
    """Inside a turn (the event loop's: every request of it already read) the first read
    checks ``data_version`` and the rest trust it; the next turn, and every read outside one,
    check again; a write always checks."""
    one, two = SQLiteStore(path, MAC), SQLiteStore(path, MAC)
    checks = 0
    read = one._read_data_version

    def counted(conn: sqlite3.Connection) -> int:
        nonlocal checks
        checks += 1
        return read(conn)

    one._read_data_version = counted  # type: ignore[method-assign]
    try:
        key = one.create(make_key("turns"))
        with one.turn():
            assert one.get(key.id) == key
            checks = 0
            revoked = two.update(lc.revoke(key, NOW, "bob"))  # committed after the turn's check
            assert one.get(key.id) == key and one.get_by_name("turns") == key
            assert checks == 0  # sent before that commit was acknowledged: the turn's check holds
            with pytest.raises(StaleRevision):  # a write checks, and CAS refuses the old revision
                one.update(lc.rotate(key, b"v2", NOW, "alice"))
            assert checks == 1
        with one.turn():
            assert one.get(key.id) == revoked  # the next turn sees it
        checks = 0
        one.get(key.id)
        one.get(key.id)
        assert checks == 2  # outside a turn: every read checks
    finally:
        one.close()
        two.close()

def test_a_failed_update_keeps_the_old_tags(store: SQLiteStore) -> None:
    key = store.create(make_key("k", ("old",)))
    store.fail_writes = True
    with pytest.raises(StoreError):
        store.update(lc.revoke(key, NOW, "alice"))
    store.fail_writes = False
    assert store.count(KeyFilter(tag="old")) == 1 and store.get(key.id) == key


def test_a_corrupted_row_names_the_key_and_spares_the_rest(store: SQLiteStore,
                                                           path: Path) -> None:
    bad, good = store.create(make_key("bad")), store.create(make_key("good"))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE keys SET record = '{\"secret\": 1' WHERE id = ?", (bad.id,))
    conn.close()
    with pytest.raises(IntegrityError) as caught:
        store.get(bad.id)
    assert bad.id in str(caught.value) and "secret" not in str(caught.value)
    assert store.get(good.id) == good and store.get_by_name("good") == good
    page = store.list(KeyFilter())
    assert [k.id for k in page.keys] == [good.id] and page.unreadable == (bad.id,)


def test_an_edited_name_column_never_hands_out_another_key(store: SQLiteStore,
                                                           path: Path) -> None:
    """The columns are not authenticated; the record a lookup returns must name the key."""
    payments, other = store.create(make_key("payments")), store.create(make_key("other"))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE keys SET name = NULL WHERE id = ?", (payments.id,))
    conn.execute("UPDATE keys SET name = 'payments' WHERE id = ?", (other.id,))
    conn.close()
    with pytest.raises(NotFound):
        store.get_by_name("payments")
    assert store.get(payments.id) == payments


def test_an_edited_filter_column_never_lists_a_key_under_a_filter_it_does_not_match(
        store: SQLiteStore, path: Path) -> None:
    """Crash tester: a state column edited to 'active' listed a revoked key under
    ?state=active (its body said revoked). Filters are checked again on the records."""
    revoked = store.create(make_key("old"))
    revoked = store.update(lc.revoke(revoked, NOW, "admin"))
    active = store.create(make_key("new"))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE keys SET state = 'active' WHERE id = ?", (revoked.id,))
    conn.close()
    listed = store.list(KeyFilter(state=KeyState.ACTIVE)).keys
    assert [k.id for k in listed] == [active.id]


def test_the_closed_store_refuses_work(store: SQLiteStore) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get(str(uuid.uuid4()))


def test_a_file_another_process_creates_at_the_same_moment_is_opened(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """processes = N on a fresh data directory: two children both find no database and both
    create it; the loser of O_EXCL opens the winner's instead of failing with EEXIST."""
    from ferrohsm.store import sqlitedb
    path.parent.mkdir(mode=0o700)
    path.write_bytes(b"")
    path.chmod(0o600)
    real, calls = os.lstat, []

    def racing(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        calls.append(target)
        if len(calls) == 1:
            raise FileNotFoundError(target)  # looked before the other process created it
        return real(target, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", racing)
    sqlitedb.prepare_file(str(path), "SQLite database")
    monkeypatch.undo()
    store = SQLiteStore(path, MAC)
    try:
        assert store.create(make_key("raced")).name == "raced"
    finally:
        store.close()


def test_opening_retries_while_another_process_holds_the_new_file_locked() -> None:
    """Processes opening one new database at once: SQLite may refuse the WAL switch or the
    schema at once ("database is locked"), without its busy handler; the open is tried again
    within the busy timeout instead of failing the process's start."""
    from ferrohsm.store.sqlitedb import retry_locked
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "open"
    assert retry_locked(flaky) == "open" and len(calls) == 3

    def broken() -> str:
        raise sqlite3.OperationalError("no such table: keys")
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retry_locked(broken)


def _open_usage(path: str, barrier: Any, failures: Any) -> None:
    from ferrohsm.store.sqlite_usage import SQLiteUsage
    barrier.wait()
    try:
        SQLiteUsage(path).close()
    except Exception as exc:  # reported to the test, whatever it is
        failures.put(str(exc))


def test_processes_opening_a_new_database_at_once_all_open_it(tmp_path: Path) -> None:
    """Red team: `processes = 2` on a new data directory failed to start about once in 25
    ("database is locked": the switch to WAL of a new file does not wait on the busy timeout).
    Six processes open each of 40 new files at the same instant: every one opens."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    failures = ctx.Queue()
    for round_ in range(40):
        barrier = ctx.Barrier(6)
        procs = [ctx.Process(target=_open_usage, args=(str(tmp_path / f"u{round_}.sqlite3"),
                                                       barrier, failures)) for _ in range(6)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(30)
            assert proc.exitcode == 0
    assert failures.empty(), failures.get()
