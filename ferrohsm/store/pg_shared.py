"""Cluster coordination on PostgreSQL for nodes on many hosts (``--key-store postgres``): the same
three jobs as store/nodelock.py and store/sqlite_usage.py, through session advisory locks and one
table. psycopg is imported here, lazily, only when a PostgreSQL store is configured.

* ``PostgresMembership``: every live node holds ``pg_advisory_lock_shared(NODES)`` on a dedicated
  connection; a start takes ``pg_advisory_lock(STARTUP)`` and then tries the exclusive
  ``pg_try_advisory_lock(NODES)``: a cold start only when no other node holds it. A node whose
  connection dies loses its locks with it, exactly as a dead process loses its flock.
* ``PostgresLeader``: ``pg_try_advisory_lock(SCHEDULER)`` on its own dedicated connection; a
  broken connection is leadership lost, and the next tick reconnects and tries again.
* ``PostgresUsage``: the rate-limit counters, an UNLOGGED table (nothing in it needs to survive a
  crash of the database).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..domain.errors import StoreError
from .pgdb import MIGRATION_LOCK, describe_dsn, scrubbed_reason
from .pgwatch import WATCHDOG

log = logging.getLogger("ferrohsm.store")

# Advisory lock ids: "FHSM" in ASCII, then a purpose byte.
STARTUP_LOCK = 0x4648534D01
NODES_LOCK = 0x4648534D02
KEEP_EVERY = 0.5  # seconds between a live node's checks of the session holding its lock
COLD_GRACE = 3 * KEEP_EVERY  # how long a start that looks cold waits before believing it
SCHEDULER_LOCK = 0x4648534D03
USAGE_SCHEMA = """
CREATE UNLOGGED TABLE IF NOT EXISTS ferrohsm_rate_usage (
    actor   TEXT NOT NULL,
    node    TEXT NOT NULL,
    role    TEXT NOT NULL,
    used    DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (actor, node)
)
"""
UPSERT = ("INSERT INTO ferrohsm_rate_usage (actor, node, role, used, updated) "
          "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (actor, node) DO UPDATE SET "
          "used = ferrohsm_rate_usage.used + excluded.used, role = excluded.role, "
          "updated = excluded.updated")
IDLE_SECONDS = 3600.0


def connect(dsn: str, *, bounded: bool = True) -> Any:
    """An autocommit psycopg connection; StoreError (never the DSN, it holds a password).
    ``bounded``: the server keeps the watchdog's deadline on each statement (store/pgwatch.py);
    not for membership, whose lock waits for a node's cold start as long as that takes."""
    try:
        import psycopg  # optional dependency: only with the PostgreSQL store
    except ImportError:
        raise StoreError("the PostgreSQL store needs psycopg: pip install 'ferrohsm[postgres]'"
                         ) from None
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=WATCHDOG.connect_timeout())
    except psycopg.Error as exc:
        where, password = describe_dsn(dsn)
        raise StoreError(f"cannot connect to PostgreSQL at {where}: "
                         f"{scrubbed_reason(exc, password)}") from None
    if bounded:
        try:
            with WATCHDOG.watch(conn):
                WATCHDOG.session_settings(conn)
        except (psycopg.Error, StoreError) as exc:
            conn.close()
            raise _error("session settings", exc) from None
    return conn


def _error(what: str, exc: Exception) -> StoreError:
    return StoreError(f"PostgreSQL {what}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


class PostgresMembership:
    def __init__(self, dsn: str, waiting: Callable[[], None] | None = None) -> None:
        self._dsn = dsn
        self._waiting = waiting  # told when another node's start (or a restore) holds the turn
        self._conn = connect(dsn, bounded=False)
        self.cold = False
        self._alive = False  # started(): this node holds the shared NODES lock

    def keep(self) -> bool:
        """Hold the shared NODES lock while serving: a database restart or a terminated backend
        ends the session that held it, and a node starting meanwhile would think itself alone
        and run the cold start-up checks beside live writers. Reconnects and takes it again;
        False while the database cannot be reached (called every half second)."""
        if not self._alive:
            return True
        try:
            with WATCHDOG.watch(self._conn):
                self._conn.execute("SELECT 1")
            return True
        except Exception:  # noqa: S110  any failure: the session (and the lock) may be gone
            pass
        try:
            self._conn.close()
        except Exception:  # noqa: S110  a broken connection is closed either way
            pass
        if WATCHDOG.silence() is not None:
            return False  # retried every half second; the lock is taken once it answers
        try:  # not watched: the lock waits for a node starting cold, and may wait long
            conn = connect(self._dsn, bounded=False)
            conn.execute("SELECT pg_advisory_lock_shared(%s)", (NODES_LOCK,))
        except Exception:
            return False
        self._conn = conn
        log.warning("the database session holding this node's cluster membership was lost; "
                    "reconnected and took the membership lock again")
        return True

    def enter(self) -> bool:
        try:
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)",
                                     (STARTUP_LOCK,)).fetchone()
            if not (row and row[0]):
                if self._waiting is not None:
                    self._waiting()
                self._conn.execute("SELECT pg_advisory_lock(%s)", (STARTUP_LOCK,))
            got = self._try_nodes()
            if got:  # alone, or live nodes just lost the sessions holding their lock: those
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (NODES_LOCK,))
                time.sleep(COLD_GRACE)  # take it again within KEEP_EVERY (keep): wait for them
                got = self._try_nodes()
            self.cold = got
            if not self.cold:
                self._conn.execute("SELECT pg_advisory_lock_shared(%s)", (NODES_LOCK,))
        except Exception as exc:
            raise _error("start-up lock", exc) from None
        return self.cold

    def _try_nodes(self) -> bool:
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (NODES_LOCK,)).fetchone()
        return bool(row and row[0])

    def started(self) -> None:
        try:
            if self.cold:
                self._conn.execute("SELECT pg_advisory_lock_shared(%s)", (NODES_LOCK,))
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (NODES_LOCK,))
            self._conn.execute("SELECT pg_advisory_unlock(%s)", (STARTUP_LOCK,))
        except Exception as exc:
            raise _error("start-up lock", exc) from None
        self._alive = True

    def close(self) -> None:
        self._conn.close()


class PostgresLeader:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: Any = None
        self._held = False

    def is_leader(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                if WATCHDOG.silence() is not None:
                    return False
                self._conn, self._held = connect(self._dsn), False
            with WATCHDOG.watch(self._conn):
                if self._held:
                    self._conn.execute("SELECT 1")  # still connected, so still holding it
                    return True
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)",
                                         (SCHEDULER_LOCK,)).fetchone()
            self._held = bool(row and row[0])
        except Exception:
            self.close()
            return False
        return self._held

    def holds(self) -> bool:
        """Whether this node led at its last tick (takes nothing)."""
        return self._held

    def close(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: S110  a broken connection is closed either way
                pass


class PostgresUsage:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: Any = connect(dsn)
        self._lock = threading.Lock()
        self._exchanges = 0
        try:  # under the migrators' lock: nodes starting together on a new database would
            # otherwise race CREATE ... IF NOT EXISTS into a duplicate-type error
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                self._conn.execute(USAGE_SCHEMA)
        except Exception as exc:
            self._conn.close()
            raise _error("rate-limit table", exc) from None

    def exchange(self, node: str, spent: Mapping[str, tuple[float, str]],
                 now: float) -> dict[tuple[str, str], tuple[float, str]]:
        with self._lock:
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._reconnect()  # the database restarted: a new session, or this fails
                with WATCHDOG.watch(self._conn), self._conn.transaction():
                    cur = self._conn.cursor()
                    if spent:
                        cur.executemany(UPSERT, [(actor, node, role, n, now)
                                                 for actor, (n, role) in spent.items()])
                    self._exchanges += 1
                    if self._exchanges % 600 == 1:
                        cur.execute("DELETE FROM ferrohsm_rate_usage WHERE updated < %s",
                                    (now - IDLE_SECONDS,))
                    rows = cur.execute("SELECT actor, node, used, role FROM ferrohsm_rate_usage "
                                       "WHERE node <> %s", (node,)).fetchall()
            except Exception as exc:
                raise _error("rate-limit exchange", exc) from None
        return {(str(a), str(n)): (float(u), str(r)) for a, n, u, r in rows}

    def _reconnect(self) -> None:
        """Replace a closed or broken session (the usage table is there already)."""
        old, self._conn = self._conn, None
        if old is not None:
            try:
                old.close()
            except Exception:  # noqa: S110  a broken connection is closed either way
                pass
        silence = WATCHDOG.silence()
        if silence is not None:
            raise StoreError(silence)
        self._conn = connect(self._dsn)  # StoreError when the database is still away

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
