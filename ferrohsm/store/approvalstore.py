"""The ApprovalStore port and its two implementations (SQLite on disk, memory for tests/dev).

Approvals must survive restarts (PRD 4.4): with a file or SQLite key store they live in
``<data_dir>/approvals.sqlite3`` (WAL, synchronous=FULL, 0600), beside the keys and independent of
the key store's format. With the memory key store nothing survives a restart anyway, so the memory
implementation is used.

Writes are compare-and-swap on ``Approval.revision``: ``swap(a)`` succeeds only while the stored
revision still equals ``a.revision``. That single primitive makes concurrent votes lose nothing
and lets exactly one of N concurrent repeats consume an approval (pending/approved -> executed).

Listing filters on the *effective* state (an open approval past ``expires_at`` lists as expired
even before the scheduler persists that). Both implementations pass
tests/conformance/test_approval_store.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

from ..domain.approval import (
    FINISHED,
    OPEN,
    Approval,
    ApprovalState,
    effective_state,
    from_record,
    to_record,
)
from ..domain.errors import Conflict, NotFound, StaleRevision, StoreError
from ..domain.model import iso


class ApprovalStore(ABC):
    """Durable approvals. Implementations must be safe to call from many threads."""

    name = "abstract"

    @abstractmethod
    def create(self, approval: Approval) -> Approval:
        """Insert; returns it with revision 1. Conflict when the id exists."""

    @abstractmethod
    def get(self, approval_id: str) -> Approval:
        """NotFound when absent."""

    @abstractmethod
    def swap(self, approval: Approval) -> Approval:
        """Store ``approval`` if the stored revision equals its revision (StaleRevision
        otherwise, NotFound when absent); returns it with revision + 1."""

    @abstractmethod
    def delete(self, approval_id: str) -> None:
        """Remove one approval (undo of a create whose audit record failed). NotFound."""

    @abstractmethod
    def list(self, state: ApprovalState | None, now: datetime, limit: int = 100,
             after: str | None = None) -> Sequence[Approval]:
        """Approvals whose effective state is ``state`` (all when None), id > ``after``,
        ascending id (ids are UUIDv7, so creation order), at most ``limit``."""

    @abstractmethod
    def expiring(self, now: datetime, limit: int = 1000) -> Sequence[Approval]:
        """Open approvals (pending/approved, as stored) whose window closed at or before now."""

    @abstractmethod
    def latest_executed(self, key_id: str, action: str) -> Approval | None:
        """The most recently executed approval of ``action`` on ``key_id`` (attestations)."""

    @abstractmethod
    def prune(self, finished_before: datetime) -> int:
        """Delete finished (denied/expired/executed) approvals last changed before the cutoff;
        returns how many. Open approvals are never pruned."""

    def close(self) -> None:
        """Release connections. Idempotent."""

    def describe(self) -> dict[str, object]:
        return {"backend": self.name}


class MemoryApprovalStore(ApprovalStore):
    """A dict behind a lock: the reference semantics the SQLite store is checked against."""

    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, Approval] = {}

    def create(self, approval: Approval) -> Approval:
        stored = replace(approval, revision=1)
        with self._lock:
            if approval.id in self._rows:
                raise Conflict(f"an approval with id {approval.id} already exists")
            self._rows[approval.id] = stored
        return stored

    def get(self, approval_id: str) -> Approval:
        with self._lock:
            found = self._rows.get(approval_id)
        if found is None:
            raise NotFound("no such approval")
        return found

    def swap(self, approval: Approval) -> Approval:
        stored = replace(approval, revision=approval.revision + 1)
        with self._lock:
            current = self._rows.get(approval.id)
            if current is None:
                raise NotFound("no such approval")
            if current.revision != approval.revision:
                raise StaleRevision(f"approval {approval.id} changed; read it again")
            self._rows[approval.id] = stored
        return stored

    def delete(self, approval_id: str) -> None:
        with self._lock:
            if self._rows.pop(approval_id, None) is None:
                raise NotFound("no such approval")

    def _all(self) -> Sequence[Approval]:
        with self._lock:
            return sorted(self._rows.values(), key=lambda a: a.id)

    def list(self, state: ApprovalState | None, now: datetime, limit: int = 100,
             after: str | None = None) -> Sequence[Approval]:
        found = [a for a in self._all() if (after is None or a.id > after)
                 and (state is None or effective_state(a, now) is state)]
        return found[:limit]

    def expiring(self, now: datetime, limit: int = 1000) -> Sequence[Approval]:
        return [a for a in self._all() if a.state in OPEN and a.expires_at <= now][:limit]

    def latest_executed(self, key_id: str, action: str) -> Approval | None:
        done = [a for a in self._all() if a.key_id == key_id and a.action == action
                and a.state is ApprovalState.EXECUTED and a.executed_at is not None]
        return max(done, key=lambda a: (a.executed_at, a.id), default=None)

    def prune(self, finished_before: datetime) -> int:
        with self._lock:
            old = [i for i, a in self._rows.items()
                   if a.state in FINISHED and a.updated_at < finished_before]
            for approval_id in old:
                del self._rows[approval_id]
        return len(old)


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
BUSY_TIMEOUT_MS = 5000
_OPEN_SQL = "('pending', 'approved')"
_FINISHED_SQL = "('denied', 'expired', 'executed')"


def _state_clause(state: ApprovalState | None, now: str) -> tuple[str, Sequence[Any]]:
    """WHERE fragment selecting an EFFECTIVE state (expiry computed against ``now``)."""
    if state is None:
        return "1 = 1", []
    if state in OPEN:
        return "state = ? AND expires_at > ?", [state.value, now]
    if state is ApprovalState.EXPIRED:
        return f"(state = 'expired' OR (state IN {_OPEN_SQL} AND expires_at <= ?))", [now]
    return "state = ?", [state.value]


class SQLiteApprovalStore(ApprovalStore):
    """Approvals in one SQLite file; safe across threads and processes (CAS in SQL)."""

    name = "sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.path.abspath(os.fspath(path))
        self._lock = threading.Lock()
        try:
            _prepare_file(self._path)
            self._conn: sqlite3.Connection | None = _connect(self._path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open approval database {self._path}: {exc}") from None

    @contextmanager
    def _tx(self, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock (IMMEDIATE for writes); rolled back on any error."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError("the approval store is closed")
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"approval database error: {exc}") from None

    @staticmethod
    def _encode(a: Approval) -> tuple[Any, ...]:
        return (a.state.value, a.key_id, a.action, iso(a.expires_at), iso(a.updated_at),
                iso(a.executed_at), a.revision, json.dumps(to_record(a), sort_keys=True))

    @staticmethod
    def _decode(text: str) -> Approval:
        try:
            return from_record(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"a stored approval is malformed: {exc}") from None

    def create(self, approval: Approval) -> Approval:
        stored = replace(approval, revision=1)
        with self._tx(write=True) as conn:
            if conn.execute("SELECT 1 FROM approvals WHERE id = ?", (stored.id,)).fetchone():
                raise Conflict(f"an approval with id {stored.id} already exists")
            conn.execute("INSERT INTO approvals (state, key_id, action, expires_at, updated_at, "
                         "executed_at, revision, record, id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (*self._encode(stored), stored.id))
        return stored

    def get(self, approval_id: str) -> Approval:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT record FROM approvals WHERE id = ?",
                               (approval_id,)).fetchone()
        if row is None:
            raise NotFound("no such approval")
        return self._decode(row[0])

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
            rows = conn.execute(f"SELECT record FROM approvals WHERE {where} {tail}",
                                args).fetchall()
        return [self._decode(r[0]) for r in rows]

    def list(self, state: ApprovalState | None, now: datetime, limit: int = 100,
             after: str | None = None) -> Sequence[Approval]:
        where, args = _state_clause(state, iso(now) or "")
        if after is not None:
            where, args = f"{where} AND id > ?", [*args, after]
        return self._select(where, [*args, limit], "ORDER BY id LIMIT ?")

    def expiring(self, now: datetime, limit: int = 1000) -> Sequence[Approval]:
        return self._select(f"state IN {_OPEN_SQL} AND expires_at <= ?", [iso(now), limit],
                            "ORDER BY id LIMIT ?")

    def latest_executed(self, key_id: str, action: str) -> Approval | None:
        found = self._select("key_id = ? AND action = ? AND state = 'executed'",
                             [key_id, action], "ORDER BY executed_at DESC, id DESC LIMIT 1")
        return found[0] if found else None

    def prune(self, finished_before: datetime) -> int:
        with self._tx(write=True) as conn:
            cur = conn.execute(f"DELETE FROM approvals WHERE state IN {_FINISHED_SQL} "
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


def _prepare_file(path: str) -> None:
    """The database is a 0600 regular file, never a symlink (-wal/-shm inherit its mode)."""
    os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600))
        return
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"approval database {path} is not a regular file")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o600)


def _connect(path: str) -> sqlite3.Connection:
    """WAL + synchronous=FULL (an approval must survive power loss), schema checked/created."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False)
    try:
        if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise StoreError(f"approval database {path} cannot use WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
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
