"""The PostgreSQL state beyond the conformance suites: numbered migrations (a newer schema is
refused, nodes starting together migrate once), the DSN kept out of every message, the shared
revoked-token list, several nodes' stores on one database, and reconnecting after a restart.

Every test runs against a real PostgreSQL (tests/pgserver.py) and skips without one.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pgserver
import psycopg
import pytest

from ferrohsm.auth.authn import Authenticator, TokenRejected, issue_token
from ferrohsm.config import load_config
from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.domain import approval as apv
from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.errors import ConfigError, StaleRevision, StoreError, Unavailable
from ferrohsm.domain.ids import uuid7
from ferrohsm.domain.model import Key, KeyState, Principal, Role
from ferrohsm.store.approvalmac import ApprovalCodec
from ferrohsm.store.pgdb import PgDatabase, dsn_from_env, migrate
from ferrohsm.store.pgschema import COMPONENT, MIGRATIONS, SCHEMA_VERSION
from ferrohsm.store.postgres import PostgresStore
from ferrohsm.store.postgres_approvals import PostgresApprovalStore
from ferrohsm.store.postgres_revocations import PostgresDenyList

CODEC = ApprovalCodec(RecordMac.for_approvals(b"a" * 32))  # the approval records' MAC


MAC = RecordMac.derive(bytes(range(32)))
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SECRET = b"k" * 32


@pytest.fixture
def dsn() -> str:
    return pgserver.shared().new_database()


@pytest.fixture
def nodes(dsn: str) -> Iterator[list[PostgresStore]]:
    """Three stores, each with its own pool: three nodes on one database."""
    stores = [PostgresStore(PgDatabase(dsn), MAC) for _ in range(3)]
    yield stores
    for store in stores:
        store.close()


def _applied(dsn: str) -> list[tuple[str, int]]:
    with psycopg.connect(dsn) as conn:
        return [(r[0], r[1]) for r in conn.execute(
            "SELECT component, version FROM schema_migrations ORDER BY 1, 2")]


def new_key(name: str | None = None) -> Key:
    return lc.new_key(key_id=uuid7(), name=name, description="", algorithm="aes-256-gcm",
                      usage="encrypt", tags=(), sealed=b"sealed-v1", now=NOW, actor="alice")


# ---- migrations ------------------------------------------------------------------------------

def test_migrations_are_numbered_recorded_and_applied_once(dsn: str) -> None:
    PostgresStore(PgDatabase(dsn), MAC).close()
    PostgresStore(PgDatabase(dsn), MAC).close()
    assert _applied(dsn) == [(COMPONENT, n) for n in range(1, SCHEMA_VERSION + 1)]


def test_the_store_commits_durably_whatever_the_databases_default(dsn: str) -> None:
    """``ALTER DATABASE … SET synchronous_commit = off``: the store's COMMIT returned before
    its WAL was on disk, and a key acknowledged 201 was gone after PostgreSQL crashed (an
    outside tester, with the file audit sink). The store's sessions set it back on."""
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)  # not this one
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)  # new sessions
    db = PgDatabase(dsn)
    try:
        assert db.run(lambda c: c.execute("SHOW synchronous_commit").fetchone(),
                      "test") == ("on",)
    finally:
        db.close()


def test_a_newer_schema_is_refused_with_a_clear_message(dsn: str) -> None:
    PostgresStore(PgDatabase(dsn), MAC).close()
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO schema_migrations (component, version) VALUES (%s, %s)",
                     (COMPONENT, SCHEMA_VERSION + 1))
    db = PgDatabase(dsn)
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this "
                                         f"FerroHSM understands \\({SCHEMA_VERSION}\\)"):
        PostgresStore(db, MAC)
    assert db.closed  # the refused store released its pool


def _start_together(starters: int, open_one: Callable[[], Any]) -> list[Any]:
    """``open_one()`` on ``starters`` threads released at one moment; what they opened (every
    one closed again), with no error."""
    barrier = threading.Barrier(starters)
    errors: list[BaseException] = []
    opened: list[Any] = []

    def start() -> None:
        barrier.wait()
        try:
            opened.append(open_one())
        except BaseException as exc:
            errors.append(exc)
    threads = [threading.Thread(target=start) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for each in opened:
        each.close()
    assert not errors and len(opened) == starters
    return opened


def test_nodes_starting_together_migrate_exactly_once(dsn: str) -> None:
    _start_together(8, lambda: PostgresStore(PgDatabase(dsn), MAC))
    assert _applied(dsn) == [(COMPONENT, n) for n in range(1, SCHEMA_VERSION + 1)]


def test_nodes_starting_together_make_the_rate_limit_table_once(dsn: str) -> None:
    """Each node makes the (unlogged) rate-limit table at start if it is missing: under the
    migrators' lock, so eight at once all start (a bare CREATE ... IF NOT EXISTS races into a
    duplicate-type error, seen with the README's three nodes on a new database)."""
    from ferrohsm.store.pg_shared import PostgresUsage
    _start_together(8, lambda: PostgresUsage(dsn))


def test_the_rate_limit_exchange_reconnects_after_its_session_is_cut(dsn: str) -> None:
    """A database restart cut the exchange's one session for good: every node then limited on
    its own (nodes x the limit) until restarted. The next exchange takes a new session."""
    from ferrohsm.domain.errors import StoreError as Failed
    from ferrohsm.store.pg_shared import PostgresUsage
    usage = PostgresUsage(dsn)
    try:
        usage.exchange("a", {"alice": (3.0, "service")}, 1.0)
        pid = usage._conn.info.backend_pid
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with contextlib.suppress(Failed):  # the cut is found by the first exchange after it
            usage.exchange("a", {}, 2.0)
        other = PostgresUsage(dsn)
        try:
            assert other.exchange("b", {}, 3.0)[("alice", "a")][0] == 3.0
            usage.exchange("a", {"alice": (5.0, "service")}, 4.0)  # a new session: published
            assert other.exchange("b", {}, 5.0)[("alice", "a")][0] == 8.0  # 3 + 5
        finally:
            other.close()
    finally:
        usage.close()


def test_a_failed_migration_changes_nothing(dsn: str) -> None:
    db = PgDatabase(dsn).retain()
    try:
        with pytest.raises(StoreError, match="schema migration of probe failed"):
            migrate(db, "probe", ("CREATE TABLE probe_one (x int)", "CREATE TABLE broken ("))
        assert migrate(db, "probe", ("CREATE TABLE probe_one (x int)",)) == 1
        assert migrate(db, "probe", ("CREATE TABLE probe_one (x int)",)) == 1  # not again
    finally:
        db.release()
    assert ("probe", 2) not in _applied(dsn) and ("probe", 1) in _applied(dsn)
    assert len(MIGRATIONS) == SCHEMA_VERSION


# ---- the DSN: only from the environment, never in a message --------------------------------

def test_the_dsn_comes_from_the_named_variable() -> None:
    with pytest.raises(ConfigError, match=r"FERROHSM_POSTGRES_DSN .*which is not set"):
        dsn_from_env("FERROHSM_POSTGRES_DSN", {})
    assert dsn_from_env("PG", {"PG": "postgresql://a@b/c"}) == "postgresql://a@b/c"


@pytest.mark.parametrize("dsn", [
    "postgresql://hsm:Sw0rdfish-9@127.0.0.1:1/keys",
    "host=127.0.0.1 port=1 user=hsm password=Sw0rdfish-9 dbname=keys",
    "host=127.0.0.1 password=Sw0rdfish-9 port=notaport",
    "postgresql://hsm:Sw0rdfish-9@[::1",
])
def test_no_message_shows_the_password(dsn: str) -> None:
    pgserver.skip_unless_available()
    with pytest.raises((StoreError, ConfigError)) as caught:
        PgDatabase(dsn, connect_timeout=2)
    assert "Sw0rdfish-9" not in caught.value.message
    assert "PostgreSQL" in caught.value.message


def test_the_configuration_names_the_variable_never_the_dsn() -> None:
    config = load_config(env={"FERROHSM_KEY_STORE": "postgres",
                              "FERROHSM_STORAGE_POSTGRES_DSN_ENV": "HSM_DB"})
    assert (config.storage.key_store, config.storage.postgres_dsn_env) == ("postgres", "HSM_DB")
    assert load_config(env={}).storage.postgres_dsn_env == "FERROHSM_POSTGRES_DSN"
    with pytest.raises(ConfigError, match=r"\[storage\].postgres_dsn_env"):
        load_config(env={"FERROHSM_STORAGE_POSTGRES_DSN_ENV": "postgresql://u:p@h/db"})


# ---- several nodes on one database ---------------------------------------------------------

def test_a_revocation_through_one_node_is_seen_by_the_others_at_once(
        nodes: list[PostgresStore]) -> None:
    a, b, c = nodes
    key = a.create(new_key("shared"))
    assert b.get(key.id).state is KeyState.ACTIVE  # now cached on b and c
    assert c.get_by_name("shared").state is KeyState.ACTIVE
    a.update(lc.revoke(a.get(key.id), NOW, "alice", "test"))
    assert b.get(key.id).state is KeyState.REVOKED
    assert c.get_by_name("shared").state is KeyState.REVOKED


def test_concurrent_rotations_through_three_nodes_give_contiguous_versions(
        nodes: list[PostgresStore]) -> None:
    key = nodes[0].create(new_key())
    rounds = 6

    def rotate(store: PostgresStore, n: int) -> None:
        done = 0
        while done < rounds:
            current = store.get(key.id)
            try:
                store.update(lc.rotate(current, f"s{n}".encode(), NOW, f"node{n}"))
                done += 1
            except StaleRevision:
                continue
    threads = [threading.Thread(target=rotate, args=(s, n)) for n, s in enumerate(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = nodes[1].get(key.id)
    assert [v.version for v in final.versions] == list(range(1, 2 + 3 * rounds))
    assert final.revision == 1 + 3 * rounds


def test_twenty_consumers_on_four_nodes_execute_an_approval_once(dsn: str) -> None:
    nodes = [PostgresApprovalStore(PgDatabase(dsn), CODEC) for _ in range(4)]
    try:
        made = apv.new_approval(approval_id=uuid7(), action="key.destroy", key_id=uuid7(),
                                args={}, salt=os.urandom(16), requester="alice", required=1,
                                now=NOW, expires_at=NOW + timedelta(hours=1))
        approval = nodes[0].create(made)
        approval = nodes[1].swap(apv.vote(approval, Principal("bob", Role.OPERATOR), True, NOW))
        barrier, wins, losses = threading.Barrier(20), [], []

        def consume(store: PostgresApprovalStore) -> None:
            current = store.get(approval.id)
            barrier.wait()
            try:
                store.swap(apv.redeem(current, "alice", "key.destroy", made.key_id, {}, NOW))
                wins.append(1)
            except StaleRevision:
                losses.append(1)
        threads = [threading.Thread(target=consume, args=(nodes[n % 4],)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert (len(wins), len(losses)) == (1, 19)
        assert nodes[3].get(approval.id).state is apv.ApprovalState.EXECUTED
    finally:
        for store in nodes:
            store.close()


def test_scrub_vacuums_the_keys_table(nodes: list[PostgresStore], dsn: str) -> None:
    key = nodes[0].create(new_key())
    key = nodes[0].update(lc.schedule_destroy(key, NOW, "a", timedelta(0)))
    nodes[0].update(lc.complete_destroy(key, NOW, "a"))
    nodes[0].scrub()
    deadline = time.monotonic() + 10
    while True:  # the statistics arrive a moment after the VACUUM
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT vacuum_count FROM pg_stat_user_tables "
                               "WHERE relname = 'keys'").fetchone()
        if (row is not None and row[0] >= 1) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert row is not None and row[0] >= 1


@pytest.mark.slow
def test_the_store_reconnects_after_a_restart_and_fails_closed_without_the_database() -> None:
    pgserver.skip_unless_available()
    with pgserver.running() as server:  # its own server: the restart must not hit other tests
        db = PgDatabase(server.new_database(), max_connections=3)
        store = PostgresStore(db, MAC)
        try:
            key = store.create(new_key("survivor"))
            server.restart()  # every pooled connection is now dead
            assert store.get(key.id) == key
            revoked = store.update(lc.revoke(key, NOW, "alice"))
            assert revoked.state is KeyState.REVOKED and db.stats()["connections_open"] == 1
            server.stop()  # gone for good: a cached key must not be served without the database
            with pytest.raises(StoreError, match="cannot connect to PostgreSQL"):
                store.get(key.id)
        finally:
            store.close()


# ---- the revoked-token list ------------------------------------------------------------------

def _authenticator(deny: PostgresDenyList) -> Authenticator:
    return Authenticator(SECRET, issuer="ferrohsm", audience="ferrohsm", deny_list=deny)


def test_a_token_revoked_on_one_node_is_refused_by_another_at_once(dsn: str) -> None:
    pools = [PgDatabase(dsn).retain() for _ in range(2)]
    try:
        one, two = (_authenticator(PostgresDenyList(db)) for db in pools)
        token = issue_token(SECRET, subject="svc", role="service", jti="jti-to-revoke")
        assert two.verify(token).subject == "svc"  # verified and cached on node two
        one.revoke("jti-to-revoke")
        with pytest.raises(TokenRejected, match="revoked"):
            two.verify(token)  # a cache hit still asks the shared list
        assert len(two.deny_list) == 1
    finally:
        for db in pools:
            db.release()


def test_entries_lengthen_expire_and_are_pruned(dsn: str) -> None:
    db = PgDatabase(dsn).retain()
    try:
        deny = PostgresDenyList(db, max_entries=2)
        deny.revoke("a", until=100.0, now=0.0)
        deny.revoke("a", until=50.0, now=0.0)  # never shortened
        deny.revoke("b", until=200.0, now=0.0)
        assert deny.is_revoked("a", 150.0)  # checked by presence, not by any node's clock
        with pytest.raises(ValueError):
            deny.revoke("bad\njti", until=1.0, now=0.0)
        assert deny.prune(99.0) == 0
        assert deny.prune(150.0) == 1 and deny.prune(250.0) == 1 and len(deny) == 0
        deny.revoke("c", 10_000.0, 0.0)
        deny.revoke("d", 10_000.0, 0.0)
        with pytest.raises(Unavailable, match="full"):
            deny.revoke("e", 10_000.0, 0.0)
        assert not deny.is_revoked("e", 0.0) and not deny.is_revoked(None, 0.0)
    finally:
        db.release()


def test_entries_in_force_are_read_whole_for_a_backup(dsn: str) -> None:
    db = PgDatabase(dsn).retain()
    try:
        deny = PostgresDenyList(db)
        assert deny.entries(0.0) == {}
        deny.revoke_all({"a": 100.0, "b": 200.5, "gone": 10.0}, now=0.0)
        assert deny.entries(50.0) == {"a": 100.0, "b": 200.5}
    finally:
        db.release()


def test_hot_path_statements_survive_a_deallocate(dsn: str) -> None:
    """The per-request lookups are prepared once per connection; anything that drops prepared
    statements behind their back (DEALLOCATE ALL, a pooler's DISCARD ALL) costs a re-prepare."""
    db = PgDatabase(dsn, max_connections=1).retain()
    try:
        deny = PostgresDenyList(db)
        deny.revoke("gone", 10.0, 0.0)
        assert deny.is_revoked("gone", 0.0)
        db.run(lambda conn: conn.execute("DEALLOCATE ALL"), "deallocate", transaction=False)
        assert deny.is_revoked("gone", 0.0) and not deny.is_revoked("kept", 0.0)
    finally:
        db.release()


def test_a_forked_child_opens_its_own_connections(dsn: str) -> None:
    """processes = N forks serving children: a pool made before the fork must not hand the
    parent's sessions to a child (two processes on one socket), and the parent keeps them."""
    db = PgDatabase(dsn, max_connections=2).retain()
    try:
        deny = PostgresDenyList(db)
        deny.revoke("forked", 10.0, 0.0)
        parent_pid = db.fetch(b"fh_pid", b"SELECT pg_backend_pid()::text", (), "pid")
        child = os.fork()
        if child == 0:  # pragma: no cover  (the child reports through its exit status)
            try:
                mine = db.fetch(b"fh_pid", b"SELECT pg_backend_pid()::text", (), "pid")
                os._exit(0 if deny.is_revoked("forked", 0.0) and mine != parent_pid else 1)
            finally:
                os._exit(2)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert deny.is_revoked("forked", 0.0)
        assert db.fetch(b"fh_pid", b"SELECT pg_backend_pid()::text", (), "pid") == parent_pid
    finally:
        db.release()


def test_a_list_that_cannot_be_asked_fails_closed(dsn: str) -> None:
    db = PgDatabase(dsn).retain()
    deny = PostgresDenyList(db)
    db.release()  # the pool is closed: no answer
    auth = _authenticator(deny)
    with pytest.raises(StoreError):
        auth.verify(issue_token(SECRET, subject="svc", role="service"))
