"""Per-actor rate-limit spending shared by the processes of one host (auth/sharedlimit.py), in
``<data_dir>/ratelimit.sqlite3``: one cumulative counter per (actor, node).

Nothing here is a secret or needs durability: a crash loses at most one interval of counting,
which only loosens a limit briefly, so the file runs with synchronous=OFF. Counters idle for
an hour are pruned.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Mapping

from ..domain.errors import StoreError
from .sqlitedb import enable_wal, prepare_file

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    actor   TEXT NOT NULL,
    node    TEXT NOT NULL,
    role    TEXT NOT NULL,
    used    REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (actor, node)
);
"""
IDLE_SECONDS = 3600.0
UPSERT = ("INSERT INTO usage (actor, node, role, used, updated) VALUES (?, ?, ?, ?, ?) "
          "ON CONFLICT (actor, node) DO UPDATE SET used = used + excluded.used, "
          "role = excluded.role, updated = excluded.updated")


class SQLiteUsage:
    """``UsageExchange`` on one SQLite file shared by the processes of a host."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.path.abspath(os.fspath(path))
        self._lock = threading.Lock()
        self._exchanges = 0
        try:
            prepare_file(self._path, "rate-limit database")
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self._path, timeout=5.0, isolation_level=None, check_same_thread=False)
            enable_wal(self._conn)
            self._conn.execute("PRAGMA synchronous = OFF")
            self._conn.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open rate-limit database {self._path}: {exc}") from None

    def exchange(self, node: str, spent: Mapping[str, tuple[float, str]],
                 now: float) -> dict[tuple[str, str], tuple[float, str]]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError("the rate-limit database is closed")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(UPSERT, [(actor, node, role, n, now)
                                              for actor, (n, role) in spent.items()])
                    self._exchanges += 1
                    if self._exchanges % 600 == 1:
                        conn.execute("DELETE FROM usage WHERE updated < ?", (now - IDLE_SECONDS,))
                    rows = conn.execute("SELECT actor, node, used, role FROM usage "
                                        "WHERE node != ?", (node,)).fetchall()
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"rate-limit database: {exc}") from None
        return {(str(a), str(n)): (float(u), str(r)) for a, n, u, r in rows}

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
