"""The PostgreSQL caches and their freshness check (store/pgfresh.py): a key or token changed
through another node, or by hand in SQL, is refused on the very next turn; a warm turn of many
requests costs ONE database round trip; a turn whose check fails is refused, never served from
memory.

Real PostgreSQL (tests/pgserver.py), real dispatcher (api/dispatch.py); each "node" is its own
store and connection pool on one database. Skips without PostgreSQL.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pgserver
import psycopg
import pytest

from ferrohsm.api.connection import Conn, Incoming
from ferrohsm.api.dispatch import Dispatcher
from ferrohsm.api.http import Headers, Request, Response, json_response
from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.errors import Forbidden, IntegrityError, NotFound, StoreError
from ferrohsm.domain.ids import uuid7
from ferrohsm.domain.model import Key, KeyState
from ferrohsm.store import pgfresh
from ferrohsm.store.pgdb import PgDatabase
from ferrohsm.store.pgfresh import Freshness
from ferrohsm.store.postgres import PostgresStore
from ferrohsm.store.postgres_revocations import PostgresDenyList

MAC = RecordMac.derive(bytes(range(32)))
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


class CountingDatabase(PgDatabase):
    """A real pool that counts the statements sent through it (pg_stat_statements is not
    loaded in the throwaway server): the round trips a turn costs."""

    round_trips = 0

    def fetch(self, name: bytes, sql: bytes, params: Sequence[str], failure: str
              ) -> list[tuple[bytes | None, ...]]:
        self.round_trips += 1
        return super().fetch(name, sql, params, failure)

    def query(self, sql: Any, args: Sequence[Any], failure: str, *, binary: bool = False,
              seconds: float | None = None) -> list[tuple[Any, ...]]:
        self.round_trips += 1
        return super().query(sql, args, failure, binary=binary, seconds=seconds)


@dataclass
class Node:
    """One FerroHSM's PostgreSQL state, wired as app.py wires it: one pool, one freshness."""

    db: CountingDatabase
    store: PostgresStore
    deny: PostgresDenyList
    dispatcher: Dispatcher

    @property
    def freshness(self) -> Freshness:
        return self.store.freshness


def open_node(dsn: str) -> Node:
    db = CountingDatabase(dsn)
    store = PostgresStore(db, MAC)
    deny = PostgresDenyList(db, freshness=store.freshness)

    def app(request: Request) -> Response:
        """An encrypt in miniature: the token's revocation check, then the key lookup."""
        if deny.is_revoked(request.headers.get("x-jti"), 0.0):
            raise Forbidden("token revoked")
        key = store.get(request.path.strip("/"))
        if key.state is not KeyState.ACTIVE:
            raise Forbidden(f"key is {key.state.value}")
        return json_response(200, {"state": key.state.value})
    dispatcher = Dispatcher(app, inline=lambda r: True, audit=None, workers=1,
                            log=logging.getLogger("test"), wake=lambda: None,
                            turn=store.freshness.turn)
    return Node(db, store, deny, dispatcher)


@pytest.fixture(autouse=True)
def one_period(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Round trips are counted here: no revalidation period may end within a test, but in
    the tests of that period."""
    if "period" not in request.node.name:
        monkeypatch.setattr(pgfresh, "REVALIDATE_SECONDS", 3600.0)


@pytest.fixture
def dsn() -> str:
    return pgserver.shared().new_database()


@pytest.fixture
def nodes(dsn: str) -> Iterator[list[Node]]:
    opened = [open_node(dsn) for _ in range(2)]
    yield opened
    for node in opened:
        node.dispatcher.close(1)
        node.store.close()


def turn(node: Node, key_id: str, count: int = 1, jti: str = "jti-1") -> list[int]:
    """One event-loop turn of ``count`` requests (all read before any runs): their statuses."""
    for n in range(count):
        sock = socket.socket()
        headers = Headers([("X-JTI", jti)])
        request = Request("POST", f"/{key_id}", f"/{key_id}", {}, headers, b"", "127.0.0.1", n,
                          None, f"r{n}", 0.0)
        node.dispatcher.take(Conn(sock, ("127.0.0.1", n)), Incoming(request, None, True, False))
        sock.close()
    return [response.status for _, _, response in node.dispatcher.answers()]


def new_key(name: str | None = None) -> Key:
    return lc.new_key(key_id=uuid7(), name=name, description="", algorithm="aes-256-gcm",
                      usage="encrypt", tags=(), sealed=b"sealed-v1", now=NOW, actor="alice")


def by_hand(dsn: str, sql: Any, args: Sequence[Any] = ()) -> None:
    """A change made at psql, outside FerroHSM: only the triggers can announce it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql, args)


def generations(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {str(n): int(g) for n, g in conn.execute(
            "SELECT name, gen FROM ferrohsm_generation")}


# ---- (c) one round trip per turn --------------------------------------------------------------

def test_a_warm_turn_of_many_requests_costs_one_round_trip(nodes: list[Node]) -> None:
    node = nodes[0]
    key = node.store.create(new_key())
    assert turn(node, key.id) == [200]  # warms the key and the token answer
    before_trips, before_checks = node.db.round_trips, node.freshness.checks
    assert turn(node, key.id, count=8) == [200] * 8
    assert node.freshness.checks - before_checks == 1
    assert node.db.round_trips - before_trips == 1  # the check; no lookup asked the database


def test_outside_a_turn_each_lookup_checks_once_instead_of_asking_twice(
        nodes: list[Node]) -> None:
    node = nodes[0]
    key = node.store.create(new_key())
    node.store.get(key.id)
    node.deny.is_revoked("jti-1", 0.0)
    before = node.db.round_trips
    assert node.store.get(key.id) == key and not node.deny.is_revoked("jti-1", 0.0)
    assert node.db.round_trips - before == 2  # one check each, the answers from memory


# ---- (a) a change through another node is refused on the very next turn -----------------------

def test_a_key_revoked_through_another_node_is_refused_on_the_next_turn(
        nodes: list[Node]) -> None:
    a, b = nodes
    key = a.store.create(new_key("shared"))
    assert turn(b, key.id, count=2) == [200, 200]  # cached on b
    a.store.update(lc.revoke(a.store.get(key.id), NOW, "alice", "test"))
    assert turn(b, key.id, count=3) == [403] * 3
    assert b.store.get_by_name("shared").state is KeyState.REVOKED


def test_a_key_destroyed_through_another_node_is_refused_on_the_next_turn(
        nodes: list[Node]) -> None:
    a, b = nodes
    key = a.store.create(new_key())
    assert turn(b, key.id) == [200]
    a.store.delete(key.id)
    assert turn(b, key.id) == [404]


def test_a_token_revoked_through_another_node_is_refused_on_the_next_turn(
        nodes: list[Node]) -> None:
    a, b = nodes
    key = a.store.create(new_key())
    assert turn(b, key.id, jti="jti-x") == [200]  # "not revoked" cached on b
    a.deny.revoke("jti-x", until=4e9, now=0.0)
    assert turn(b, key.id, jti="jti-x") == [403]
    assert turn(b, key.id, jti="jti-y") == [200]


def test_a_change_committed_after_a_turns_check_is_seen_by_the_next_turn(
        nodes: list[Node]) -> None:
    a, b = nodes
    key = a.store.create(new_key())
    b.store.get(key.id)
    with b.freshness.turn():  # requests read before the revocation was acknowledged
        assert b.store.get(key.id).state is KeyState.ACTIVE  # the turn's check is made here
        a.store.update(lc.revoke(a.store.get(key.id), NOW, "alice"))
        assert b.store.get(key.id).state is KeyState.ACTIVE  # may be served as it was read
    with b.freshness.turn():  # the next turn
        assert b.store.get(key.id).state is KeyState.REVOKED


def test_a_turn_without_lookups_costs_no_round_trip(nodes: list[Node]) -> None:
    node = nodes[0]
    before = node.db.round_trips
    with node.freshness.turn():  # a turn of health probes
        pass
    assert node.db.round_trips == before


# ---- (b) changes made by hand in SQL ----------------------------------------------------------

def test_a_manual_update_of_the_keys_table_invalidates_every_cache(
        nodes: list[Node], dsn: str) -> None:
    node = nodes[0]
    key = node.store.create(new_key())
    assert turn(node, key.id) == [200]
    by_hand(dsn, "UPDATE keys SET record = %s WHERE id = %s", (b"not a record", key.id))
    statuses = turn(node, key.id)  # the damaged record is read and refused, not the cache
    assert statuses != [200]
    by_hand(dsn, "DELETE FROM keys WHERE id = %s", (key.id,))
    with node.freshness.turn(), pytest.raises(NotFound):
        node.store.get(key.id)


def test_a_manual_insert_into_revoked_tokens_is_honoured_on_the_next_turn(
        nodes: list[Node], dsn: str) -> None:
    node = nodes[0]
    key = node.store.create(new_key())
    assert turn(node, key.id, jti="by-hand") == [200]
    by_hand(dsn, "INSERT INTO revoked_tokens (jti, until) VALUES ('by-hand', 4e9)")
    assert turn(node, key.id, jti="by-hand") == [403]


def test_a_generation_moves_only_when_the_change_commits(nodes: list[Node], dsn: str) -> None:
    key = nodes[0].store.create(new_key())
    before = generations(dsn)
    with psycopg.connect(dsn) as conn:  # one open transaction, as a slow writer holds it
        conn.execute("UPDATE keys SET state = state WHERE id = %s", (key.id,))
        assert generations(dsn) == before  # not visible before COMMIT (a SEQUENCE would be)
        seen = nodes[1].freshness.check()
        assert nodes[1].freshness._raw == (before["keys"], before["revoked_tokens"])
    after = generations(dsn)
    assert after == {**before, "keys": before["keys"] + 1}
    assert nodes[1].freshness.check().keys != seen.keys
    assert nodes[1].freshness._raw == (after["keys"], after["revoked_tokens"])


# ---- (d) a failed check refuses -------------------------------------------------------------

def test_a_turn_whose_check_fails_is_refused_not_served_from_memory(dsn: str) -> None:
    node = open_node(dsn)
    try:
        key = node.store.create(new_key())
        assert turn(node, key.id, count=2) == [200, 200]  # both caches warm
        node.db.close()  # the database cannot be asked any more
        assert turn(node, key.id, count=3) == [503] * 3
        with node.freshness.turn(), pytest.raises(StoreError):
            node.deny.is_revoked("jti-1", 0.0)
    finally:
        node.dispatcher.close(1)
        node.store.close()


def test_a_turn_is_refused_while_the_database_refuses_and_served_once_it_is_back(
        dsn: str) -> None:
    node = open_node(dsn)
    name = dsn.rsplit("/", 1)[1]
    admin = pgserver.shared().dsn()
    try:
        key = node.store.create(new_key())
        assert turn(node, key.id) == [200]
        by_hand(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        by_hand(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = %s", (name,))  # every pooled connection dies
        assert turn(node, key.id, count=2) == [503, 503]
        by_hand(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert turn(node, key.id) == [200]
    finally:
        by_hand(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        node.dispatcher.close(1)
        node.store.close()


def test_a_change_under_another_search_path_still_moves_the_counter(dsn: str) -> None:
    """Someone at psql with the table schema-qualified and another search_path: the trigger
    finds the counter beside the changed table, not by the writer's search_path."""
    node = open_node(dsn)
    try:
        key = node.store.create(new_key())
        before = generations(dsn)["keys"]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA elsewhere")
            conn.execute("SET search_path = elsewhere")
            conn.execute("UPDATE public.keys SET state = state WHERE id = %s", (key.id,))
        assert generations(dsn)["keys"] == before + 1
    finally:
        node.dispatcher.close(1)
        node.store.close()


# ---- the counter is not authenticated: a hand in the database stops or rewinds it ------------

FREEZE = """
CREATE FUNCTION frozen() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$;
CREATE TRIGGER frozen BEFORE UPDATE ON ferrohsm_generation FOR EACH ROW EXECUTE FUNCTION frozen();
"""


def test_a_change_whose_counter_is_frozen_is_refused_not_acknowledged(nodes: list[Node],
                                                                      dsn: str) -> None:
    """A trigger that keeps ferrohsm_generation still (an outside tester): the revoke was
    acknowledged and the other nodes went on encrypting with the key. Now the change fails
    in its own transaction, so the key stays as every node sees it."""
    a, b = nodes
    key = a.store.create(new_key())
    assert turn(b, key.id) == [200]
    by_hand(dsn, FREEZE)
    with pytest.raises(IntegrityError, match="did not move with this change"):
        a.store.update(lc.revoke(a.store.get(key.id), NOW, "alice", "test"))
    assert a.store.get(key.id).state is KeyState.ACTIVE
    with pytest.raises(IntegrityError, match="did not move"):
        a.deny.revoke("jti-frozen", 4_000_000_000.0, 0.0)
    assert not b.deny.is_revoked("jti-frozen", 0.0)


def test_a_counter_put_back_by_hand_is_outlived_within_a_period(
        nodes: list[Node], dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The revoke committed, then the counter was set back to what node b last saw: b's
    check finds nothing changed. Its cached key serves at most one revalidation period more."""
    monkeypatch.setattr(pgfresh, "REVALIDATE_SECONDS", 0.5)
    a, b = nodes
    key = a.store.create(new_key())
    assert turn(b, key.id) == [200]
    seen = generations(dsn)["keys"]
    a.store.update(lc.revoke(a.store.get(key.id), NOW, "alice", "test"))
    by_hand(dsn, "UPDATE ferrohsm_generation SET gen = %s WHERE name = 'keys'", (seen,))
    deadline = time.monotonic() + 2 * 0.5 + 0.5
    while turn(b, key.id) != [403]:
        assert time.monotonic() < deadline, "a stale key served past its period"
        time.sleep(0.05)


def test_a_counter_lower_than_one_read_before_changes_every_tag(
        caplog: pytest.LogCaptureFixture) -> None:
    """What caches are tagged with never repeats after the counter goes back: a later honest
    change could otherwise land on a number an old entry carries."""
    fresh = Freshness.__new__(Freshness)
    fresh._raw, fresh._shift = None, [0, 0]
    first = fresh._tags((7, 3), 10.0)
    with caplog.at_level(logging.ERROR, logger="ferrohsm.store"):
        back = fresh._tags((5, 3), 10.0)
    assert "went back from 7 to 5" in caplog.text
    assert back.keys > first.keys and back.tokens == first.tokens
    assert fresh._tags((7, 3), 10.0).keys not in (first.keys, back.keys)
