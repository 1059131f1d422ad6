"""Approvals in PostgreSQL, shared by every node on the database.

Exactly-once execution rests on ``swap``: ONE conditional statement, ``UPDATE ... WHERE id = %s
AND revision = %s``. Under READ COMMITTED, concurrent swaps of one approval queue on its row lock;
each re-checks ``revision`` on the newest committed version once the lock is free, so of N
consumers holding the same revision (on one node or on many) exactly one updates a row and the
others get StaleRevision. Votes cast through different nodes are therefore never lost either.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from ..domain.approval import OPEN, Approval, ApprovalState, effective_state
from ..domain.errors import Conflict, NotFound, StaleRevision, StoreError
from .approvalmac import ApprovalCodec
from .approvalstore import (
    FINISHED_SQL,
    OPEN_SQL,
    TWINS_SQL,
    ApprovalStore,
    in_state,
    state_clause,
)
from .pgdb import Conn, PgDatabase
from .pgschema import prepare

_COLUMNS = ("state, key_id, action, expires_at, updated_at, executed_at, revision, record")


def _usable(text: object) -> bool:
    """PostgreSQL text cannot hold NUL: such an id names no approval."""
    return isinstance(text, str) and "\x00" not in text


class PostgresApprovalStore(ApprovalStore):
    """Approvals in PostgreSQL; safe across threads, processes and hosts (CAS in SQL)."""

    name = "postgres"

    def __init__(self, db: PgDatabase, codec: ApprovalCodec) -> None:
        self._codec = codec  # each record authenticated (store/approvalmac.py)
        self._db = db.retain()
        self._lock = threading.Lock()
        self._closed = False
        try:
            prepare(db)
        except BaseException:
            self.close()
            raise

    def _run(self, work: Any, *, write: bool) -> Any:
        if self._closed:
            raise StoreError("the approval store is closed")
        return self._db.run(work, "approval database error", transaction=write)

    def _encode(self, a: Approval) -> tuple[Any, ...]:
        return (a.state.value, a.key_id, a.action, a.expires_at, a.updated_at, a.executed_at,
                a.revision, self._codec.encode(a))

    def create(self, approval: Approval) -> Approval:
        stored = replace(approval, revision=1)

        def work(conn: Conn) -> bool:
            return conn.execute(f"INSERT INTO approvals (id, {_COLUMNS}) "  # noqa: S608  constant
                                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                                "ON CONFLICT (id) DO NOTHING RETURNING 1",
                                (stored.id, *self._encode(stored))).fetchone() is not None
        if not _usable(stored.id) or not self._run(work, write=False):
            raise Conflict(f"an approval with id {stored.id} already exists")
        return stored

    def create_once(self, approval: Approval, now: datetime,
                    same: Callable[[Approval], bool]) -> Approval:
        stored = replace(approval, revision=1)
        if not (_usable(stored.id) and _usable(stored.key_id) and _usable(stored.action)):
            raise Conflict(f"an approval with id {stored.id} cannot be stored")

        def work(conn: Conn) -> Approval | None:
            # one parker of this key and action at a time, on every node (a bigint key: apart
            # from the (class, id) pairs of the audit sink's locks)
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                         (f"approval/{stored.key_id}/{stored.action}",))
            rows = conn.execute("SELECT record FROM approvals WHERE "  # noqa: S608  a constant
                                + TWINS_SQL.format(m="%s"),
                                (stored.key_id, stored.action, now)).fetchall()
            for twin in self._codec.decode_all(row[0] for row in rows):
                if effective_state(twin, now) in OPEN and same(twin):
                    return twin
            inserted = conn.execute(f"INSERT INTO approvals (id, {_COLUMNS}) "  # noqa: S608  constant
                                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                                    "ON CONFLICT (id) DO NOTHING RETURNING 1",
                                    (stored.id, *self._encode(stored))).fetchone()
            if inserted is None:
                raise Conflict(f"an approval with id {stored.id} already exists")
            return None
        twin = self._run(work, write=True)
        return stored if twin is None else twin

    def get(self, approval_id: str) -> Approval:
        if not _usable(approval_id):
            raise NotFound("no such approval")
        rows = self._run(lambda conn: conn.execute(
            "SELECT record FROM approvals WHERE id = %s", (approval_id,)).fetchall(), write=False)
        if not rows:
            raise NotFound("no such approval")
        return self._codec.decode(rows[0][0])

    def swap(self, approval: Approval) -> Approval:
        stored = replace(approval, revision=approval.revision + 1)

        def work(conn: Conn) -> tuple[bool, bool]:
            done = conn.execute(
                "UPDATE approvals SET state = %s, key_id = %s, action = %s, expires_at = %s, "
                "updated_at = %s, executed_at = %s, revision = %s, record = %s "
                "WHERE id = %s AND revision = %s RETURNING 1",
                (*self._encode(stored), approval.id, approval.revision)).fetchone()
            if done is not None:
                return True, True
            exists = conn.execute("SELECT 1 FROM approvals WHERE id = %s",
                                  (approval.id,)).fetchone()
            return False, exists is not None
        swapped, exists = self._run(work, write=False) if _usable(approval.id) else (False, False)
        if not exists:
            raise NotFound("no such approval")
        if not swapped:
            raise StaleRevision(f"approval {approval.id} changed; read it again")
        return stored

    def delete(self, approval_id: str) -> None:
        def work(conn: Conn) -> bool:
            return conn.execute("DELETE FROM approvals WHERE id = %s RETURNING 1",
                                (approval_id,)).fetchone() is not None
        if not _usable(approval_id) or not self._run(work, write=False):
            raise NotFound("no such approval")

    def _select(self, where: str, args: Sequence[Any], tail: str) -> list[Approval]:
        sql = f"SELECT record FROM approvals WHERE {where} {tail}"  # noqa: S608  fixed fragments

        def work(conn: Conn) -> list[Any]:
            return conn.execute(sql, args).fetchall()
        return self._codec.decode_all(row[0] for row in self._run(work, write=False))

    def list(self, state: ApprovalState | None, now: datetime, limit: int = 100,
             after: str | None = None) -> Sequence[Approval]:
        where, args = state_clause(state, now, "%s")
        if after is not None:
            if not _usable(after):
                return []
            where, args = f"{where} AND id > %s", [*args, after]
        return in_state(self._select(where, [*args, limit], "ORDER BY id LIMIT %s"),
                        state, now)

    def expiring(self, now: datetime, limit: int = 1000) -> Sequence[Approval]:
        return self._select(f"state IN {OPEN_SQL} AND expires_at <= %s", [now, limit],
                            "ORDER BY id LIMIT %s")

    def latest_executed(self, key_id: str, action: str) -> Approval | None:
        if not (_usable(key_id) and _usable(action)):
            return None
        found = self._select("key_id = %s AND action = %s AND state = 'executed'",
                             [key_id, action], "ORDER BY executed_at DESC, id DESC LIMIT 1")
        return found[0] if found else None

    def prune(self, finished_before: datetime) -> int:
        def work(conn: Conn) -> int:
            cur = conn.execute(f"DELETE FROM approvals WHERE state IN {FINISHED_SQL} "  # noqa: S608  a constant
                               "AND updated_at < %s", (finished_before,))
            return int(cur.rowcount)
        return int(self._run(work, write=False))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._db.release()

    def describe(self) -> dict[str, object]:
        rows = self._run(lambda conn: conn.execute("SELECT count(*) FROM approvals").fetchall(),
                         write=False)
        return {"backend": self.name, "database": self._db.where, "approvals": int(rows[0][0])}
