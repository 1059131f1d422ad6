"""Approvals in one SQLite file (WAL, synchronous=FULL, 0600); safe across threads and processes
because the compare-and-swap is one SQL statement.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

from ..domain.approval import OPEN, Approval, ApprovalState, effective_state
from ..domain.errors import Conflict, NotFound, StaleRevision, StoreError
from ..domain.model import iso
from .approvalmac import ApprovalCodec
from .approvalstore import (
    FINISHED_SQL,
    OPEN_SQL,
    TWINS_SQL,
    ApprovalStore,
    in_state,
    state_clause,
)
from .sqlitedb import connect_durable, prepare_file, retry_locked, transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id          TEXT PRIMARY KEY NOT NULL,
    state       TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    action      TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    executed_at TEXT,
    revision    INTEGER NOT NULL,
    record      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approvals_by_state ON approvals (state, expires_at);
CREATE INDEX IF NOT EXISTS approvals_by_key ON approvals (key_id, action, executed_at);
"""
SCHEMA_VERSION = 1


class SQLiteApprovalStore(ApprovalStore):
    """Approvals in one SQLite file; safe across threads and processes (CAS in SQL)."""

    name = "sqlite"

    def __init__(self, path: str | os.PathLike[str], codec: ApprovalCodec) -> None:
        self._codec = codec  # each record authenticated (store/approvalmac.py)
        self._path = os.path.abspath(os.fspath(path))
        self._lock = threading.Lock()
        try:
            prepare_file(self._path, "approval database")
            self._conn: sqlite3.Connection | None = retry_locked(
                lambda: _connect(self._path))
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open approval database {self._path}: {exc}") from None

    @contextmanager
    def _tx(self, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock (IMMEDIATE for writes); rolled back on any error."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError("the approval store is closed")
            with transaction(conn, write=write, failure="approval database error") as tx:
                yield tx

    def _encode(self, a: Approval) -> tuple[Any, ...]:
        return (a.state.value, a.key_id, a.action, iso(a.expires_at), iso(a.updated_at),
                iso(a.executed_at), a.revision, self._codec.encode(a))

    def create(self, approval: Approval) -> Approval:
        stored = replace(approval, revision=1)
        with self._tx(write=True) as conn:
            self._insert(conn, stored)
        return stored

    def create_once(self, approval: Approval, now: datetime,
                    same: Callable[[Approval], bool]) -> Approval:
        stored = replace(approval, revision=1)
        with self._tx(write=True) as conn:  # IMMEDIATE: one writer, in every process
            rows = conn.execute("SELECT record FROM approvals WHERE "  # noqa: S608  a constant
                                + TWINS_SQL.format(m="?"),
                                (approval.key_id, approval.action, iso(now))).fetchall()
            for twin in self._codec.decode_all(r[0] for r in rows):
                if effective_state(twin, now) in OPEN and same(twin):
                    return twin
            self._insert(conn, stored)
        return stored

    def _insert(self, conn: sqlite3.Connection, stored: Approval) -> None:
        """Inside a write transaction; Conflict when the id exists."""
        if conn.execute("SELECT 1 FROM approvals WHERE id = ?", (stored.id,)).fetchone():
            raise Conflict(f"an approval with id {stored.id} already exists")
        conn.execute("INSERT INTO approvals (state, key_id, action, expires_at, updated_at, "
                     "executed_at, revision, record, id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (*self._encode(stored), stored.id))

    def get(self, approval_id: str) -> Approval:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT record FROM approvals WHERE id = ?",
                               (approval_id,)).fetchone()
        if row is None:
            raise NotFound("no such approval")
        return self._codec.decode(row[0])

    def swap(self, approval: Approval) -> Approval:
        stored = replace(approval, revision=approval.revision + 1)
        with self._tx(write=True) as conn:
            cur = conn.execute("UPDATE approvals SET state = ?, key_id = ?, action = ?, "
                               "expires_at = ?, updated_at = ?, executed_at = ?, revision = ?, "
                               "record = ? WHERE id = ? AND revision = ?",
                               (*self._encode(stored), approval.id, approval.revision))
            if cur.rowcount != 1:
                exists = conn.execute("SELECT 1 FROM approvals WHERE id = ?",
                                      (approval.id,)).fetchone()
                if not exists:
                    raise NotFound("no such approval")
                raise StaleRevision(f"approval {approval.id} changed; read it again")
        return stored

    def delete(self, approval_id: str) -> None:
        with self._tx(write=True) as conn:
            if conn.execute("DELETE FROM approvals WHERE id = ?", (approval_id,)).rowcount != 1:
                raise NotFound("no such approval")

    def _select(self, where: str, args: Sequence[Any], tail: str) -> Sequence[Approval]:
        with self._tx(write=False) as conn:
            rows = conn.execute(f"SELECT record FROM approvals WHERE {where} {tail}",  # noqa: S608  fixed fragments; values bind to ?
                                args).fetchall()
        return self._codec.decode_all(r[0] for r in rows)

    def list(self, state: ApprovalState | None, now: datetime, limit: int = 100,
             after: str | None = None) -> Sequence[Approval]:
        where, args = state_clause(state, iso(now) or "", "?")
        if after is not None:
            where, args = f"{where} AND id > ?", [*args, after]
        return in_state(self._select(where, [*args, limit], "ORDER BY id LIMIT ?"),
                        state, now)

    def expiring(self, now: datetime, limit: int = 1000) -> Sequence[Approval]:
        return self._select(f"state IN {OPEN_SQL} AND expires_at <= ?", [iso(now), limit],
                            "ORDER BY id LIMIT ?")

    def latest_executed(self, key_id: str, action: str) -> Approval | None:
        found = self._select("key_id = ? AND action = ? AND state = 'executed'",
                             [key_id, action], "ORDER BY executed_at DESC, id DESC LIMIT 1")
        return found[0] if found else None

    def prune(self, finished_before: datetime) -> int:
        with self._tx(write=True) as conn:
            cur = conn.execute(f"DELETE FROM approvals WHERE state IN {FINISHED_SQL} "  # noqa: S608  a constant
                               "AND updated_at < ?", (iso(finished_before),))
            return int(cur.rowcount)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def describe(self) -> dict[str, object]:
        with self._tx(write=False) as conn:
            count = conn.execute("SELECT count(*) FROM approvals").fetchone()[0]
        return {"backend": self.name, "path": self._path, "approvals": count}


def _connect(path: str) -> sqlite3.Connection:
    """Durable connection, schema checked (a newer one is refused) and created when missing."""
    conn = connect_durable(path, "approval database")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(f"approval database {path} has schema {version}, newer than "
                             f"this FerroHSM understands ({SCHEMA_VERSION})")
        if version < SCHEMA_VERSION:
            conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = "
                               f"{SCHEMA_VERSION:d}; COMMIT;")
    except BaseException:
        conn.close()
        raise
    return conn
