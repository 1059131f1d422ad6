"""What every PostgreSQL-backed store shares: the driver (loaded lazily), the DSN (from the
environment only), a small thread-safe connection pool, one transaction runner and numbered
schema migrations, so the key store, the approval store and the revoked-token list cannot drift
apart on any of them.

Why these choices:

* psycopg 3 is imported here and only when a PostgreSQL store is configured: a FerroHSM on the
  filesystem or SQLite store never loads it, and a host without libpq5 only fails when asked for
  PostgreSQL, with a message that says what to install.
* The DSN, which carries the password, comes only from the environment variable that
  ``[storage].postgres_dsn_env`` names. No message ever contains the DSN: errors name
  ``user@host:port/database`` and libpq's reason, with the password scrubbed should libpq ever
  echo it.
* A pool of at most ``max_connections`` connections, each used by one thread at a time for one
  transaction. The server's worker threads come and go, so a connection per thread would leak;
  a pool bounds what one node asks of the database (nodes x processes x pool <= max_connections
  of the server). A thread that finds every connection busy waits, at most ``wait_seconds``.
* READ COMMITTED transactions. Compare-and-swap never needs more: a conditional ``UPDATE ...
  WHERE revision = %s`` (or ``SELECT ... FOR UPDATE`` then ``UPDATE``) re-checks its condition
  on the newest committed row after waiting for a concurrent writer's row lock, so of two
  writers holding the same revision exactly one succeeds, on any node.
* Reconnecting: a connection that breaks (the server restarted, a network cut) is dropped with
  every idle one (they are most likely dead too), and the transaction is run once more on a
  fresh connection when it cannot have committed: any failure before COMMIT was sent. A failure
  during COMMIT is reported as a StoreError (the outcome is unknown to us; callers already treat
  a store failure as "maybe applied": service/changes.py records intents first).
* Migrations are numbered per component in ``schema_migrations (component, version)`` and run
  in ONE transaction holding a transaction-level advisory lock, so nodes starting together
  apply each migration exactly once and the others wait, then see it applied. A database whose
  schema is newer than this build knows is refused with a message saying so. Other components
  (the PostgreSQL audit sink) may share the table and the lock under their own component name.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, LiteralString, TypeVar

from ..domain.errors import ConfigError, StoreError
from .pgwatch import WATCHDOG, Watchdog
from .records import write_error

if TYPE_CHECKING:
    import psycopg

    Conn = psycopg.Connection[tuple[Any, ...]]
else:
    Conn = Any

T = TypeVar("T")

DEFAULT_DSN_ENV = "FERROHSM_POSTGRES_DSN"
HEALTH_SECONDS = 1.0  # a health count's deadline (pgwatch.GRACE more): the loop waits for it
INSTALL_HINT = ("install psycopg 3 (python3 -m pip install 'ferrohsm[postgres]'; dist/ferrohsm "
                "carries it) and the host's libpq (Debian: apt-get install libpq5)")
MIGRATION_LOCK = 0x6665_7272_6F68_736D  # "ferrohsm": the advisory lock every migrator takes
MIGRATIONS_TABLE: LiteralString = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component  text NOT NULL,
    version    integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)"""
# synchronous_commit: a COMMIT returns once its WAL is flushed, whatever the database's default
# (``ALTER DATABASE … SET synchronous_commit = off`` is a common tuning, under which an
# acknowledged key vanished when PostgreSQL crashed: an outside tester); the audit sink's
# sessions set it too (audit/pgsink.py).
SESSION_SETTINGS: tuple[LiteralString, ...] = ("SET idle_in_transaction_session_timeout = '60s'",
                                               "SET synchronous_commit TO on")


def driver() -> ModuleType:
    """psycopg, imported on first use; a ConfigError saying what to install when it is missing."""
    try:
        import psycopg
    except ImportError as exc:
        raise ConfigError(f"the PostgreSQL store needs psycopg 3 and libpq ({exc}): "
                          f"{INSTALL_HINT}") from None
    return psycopg


def dsn_from_env(variable: str, environ: Mapping[str, str]) -> str:
    """The DSN from ``variable``; a ConfigError naming the variable (never a value) otherwise."""
    if not variable:
        raise ConfigError("[storage].postgres_dsn_env must name an environment variable")
    dsn = environ.get(variable, "")
    if not dsn.strip():
        raise ConfigError(f"PostgreSQL (the key store, the audit sink) takes its DSN from the "
                          f"environment variable {variable} ([storage].postgres_dsn_env), which "
                          "is not set")
    describe_dsn(dsn)  # a malformed one is the operator's to fix (exit 2), not an outage
    return dsn


def describe_dsn(dsn: str) -> tuple[str, str]:
    """(``user@host:port/database``, password): what messages may name, and what they must not."""
    try:
        params = driver().conninfo.conninfo_to_dict(dsn)
    except ConfigError:
        raise
    except Exception:  # psycopg's parse error may quote the DSN: say nothing of it
        raise ConfigError("the PostgreSQL DSN is not a valid connection string or URL") from None
    ports = str(params.get("port") or "").split(",")  # one a host: "5432,5433" with two hosts
    if not all(p.strip() == "" or (p.strip().isdigit() and 0 < int(p) < 65536) for p in ports):
        raise ConfigError("the PostgreSQL DSN's port must be a number from 1 to 65535")
    user = params.get("user") or ""
    where = (f"{user + '@' if user else ''}{params.get('host') or 'localhost'}:"
             f"{params.get('port') or 5432}/{params.get('dbname') or user or '?'}")
    return where, str(params.get("password") or "")


def scrubbed_reason(exc: BaseException, password: str) -> str:
    """libpq's or PostgreSQL's reason on one line, with ``password`` taken out should libpq
    ever echo it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if password:
        text = text.replace(password, "***")
    return text[:300]


class PgDatabase:
    """A pool of connections to one database, shared by every store of a process.

    Stores ``retain`` it when they open and ``release`` it when they close; the last release
    closes the connections.
    """

    def __init__(self, dsn: str, *, max_connections: int = 8, wait_seconds: float = 10.0,
                 connect_timeout: int = 10, watchdog: Watchdog = WATCHDOG) -> None:
        self._psycopg = driver()
        self._dog = watchdog  # every wait below is cut past its deadline (store/pgwatch.py)
        self._dsn = dsn
        self.where, self._password = describe_dsn(dsn)
        # run() sends BEGIN/COMMIT itself. psycopg's own statement preparing is off: it answers
        # any ROLLBACK with DEALLOCATE ALL, which would also drop fetch()'s statements.
        self._kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": None}
        params = self._psycopg.conninfo.conninfo_to_dict(dsn)
        if "connect_timeout" not in params:  # a new session is no longer than any other wait
            self._kwargs["connect_timeout"] = min(connect_timeout, watchdog.connect_timeout())
        if "application_name" not in params:
            self._kwargs["application_name"] = "ferrohsm"
        self._max = max(1, max_connections)
        self._wait = wait_seconds
        self._cond = threading.Condition()
        self._idle: list[Conn] = []
        self._cursors: dict[int, Any] = {}  # id(connection) -> its kept cursor (query())
        self._prepared: dict[int, set[bytes]] = {}  # id(connection) -> statements (fetch())
        self._open = 0
        self._refs = 0
        self._closed = False
        self._pid = os.getpid()
        self._idle.append(self._connect())  # fail at start-up, not on the first request
        self._open = 1
        self.server_version = int(self._idle[0].info.server_version)
        watchdog.offer_probe(self.probe)

    # ---- messages ----

    def reason(self, exc: BaseException) -> str:
        """libpq's or PostgreSQL's reason on one line, without the password."""
        return scrubbed_reason(exc, self._password)

    # ---- connections ----

    def _connect(self) -> Conn:
        silence = self._dog.silence()
        if silence is not None:  # not even a new session: its first packet waits as long
            raise StoreError(f"cannot connect to PostgreSQL at {self.where}: {silence}")
        try:
            conn: Conn = self._psycopg.connect(self._dsn, **self._kwargs)
        except self._psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self.where}: "
                             f"{self.reason(exc)}") from None
        try:
            with self._dog.watch(conn):
                self._dog.session_settings(conn)
                for statement in SESSION_SETTINGS:
                    conn.execute(statement)
        except (self._psycopg.Error, StoreError) as exc:
            conn.close()
            raise StoreError(f"cannot set up a PostgreSQL session at {self.where}: "
                             f"{self.reason(exc)}") from None
        return conn

    def probe(self) -> None:
        """One question on a new session, for the watchdog while the database is silent
        (store/pgwatch.py): its answer ends the silence."""
        conn: Conn = self._psycopg.connect(self._dsn, **self._kwargs)
        try:
            with self._dog.watch(conn, probe=True):
                conn.execute("SELECT 1")
        finally:
            conn.close()

    def _unanswered(self, failure: str, unknown: str = "") -> StoreError:
        """The error of a wait the watchdog cut."""
        why = self._dog.silence() or "the PostgreSQL database did not answer in time"
        return StoreError(f"{failure}: {why}{unknown}")

    def _refuse_if_silent(self, failure: str) -> None:
        """Nothing is sent to a database known not to answer: the caller is told at once."""
        silence = self._dog.silence()
        if silence is not None:
            raise StoreError(f"{failure}: {silence}")

    def _take(self) -> Conn:
        deadline = time.monotonic() + self._wait
        with self._cond:
            if self._pid != os.getpid():
                self._after_fork()
            while True:
                if self._closed:
                    raise StoreError("the PostgreSQL connection pool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._open < self._max:
                    self._open += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreError(f"all {self._max} PostgreSQL connections stayed busy for "
                                     f"{self._wait:g} s")
                self._cond.wait(left)
        try:
            return self._connect()
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def _after_fork(self) -> None:
        """In a forked child: the parent's connections are the parent's (closing them here
        would end its sessions), so the child forgets them and opens its own. Holds _cond."""
        self._pid = os.getpid()
        self._idle, self._cursors, self._prepared = [], {}, {}
        self._open = 0

    def _give_back(self, conn: Conn) -> None:
        pq = self._psycopg.pq
        if conn.closed or conn.broken or conn.pgconn.status == pq.ConnStatus.BAD:
            self._forget(conn)
            return
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:  # a failed ROLLBACK
            with self._cond:
                self._open -= 1
                self._cursors.pop(id(conn), None)
                self._prepared.pop(id(conn), None)
                self._cond.notify()
            with contextlib.suppress(Exception):
                conn.close()
            return
        with self._cond:
            if self._closed:
                self._open -= 1
                self._cursors.pop(id(conn), None)
                self._prepared.pop(id(conn), None)
                conn.close()
            else:
                self._idle.append(conn)
            self._cond.notify()

    def _forget(self, conn: Conn) -> None:
        """Drop a connection that broke, and every idle one: after a server restart they are all
        dead, and finding that out one failed request at a time helps nobody."""
        with self._cond:
            stale, self._idle = self._idle, []
            self._open -= 1 + len(stale)
            for dead in (conn, *stale):
                self._cursors.pop(id(dead), None)
                self._prepared.pop(id(dead), None)
            self._cond.notify_all()
        for dead in (conn, *stale):
            with contextlib.suppress(Exception):
                dead.close()

    # ---- transactions ----

    def run(self, work: Callable[[Conn], T], failure: str, *, transaction: bool = True) -> T:
        """``work(conn)`` in one transaction, committed on return, rolled back on any exception;
        with ``transaction=False`` each statement commits alone (one round trip for a read).

        ``failure`` starts the StoreError message ("could not write key X"). A transaction that
        fails because its connection broke is run once more on a fresh connection when it cannot
        have committed."""
        self._refuse_if_silent(failure)
        for attempt in (1, 2):
            conn = self._take()
            try:
                return self._once(conn, work, failure, transaction, retry=attempt == 1)
            except _Retry:
                continue
        raise StoreError(f"{failure}: the PostgreSQL connection broke twice")  # pragma: no cover

    def _once(self, conn: Conn, work: Callable[[Conn], T], failure: str, transaction: bool, *,
              retry: bool) -> T:
        pg = self._psycopg
        committing = False
        watch = self._dog.watch(conn)
        try:
            with watch:
                if transaction:
                    conn.execute("BEGIN")
                result = work(conn)
                if transaction:
                    committing = True
                    conn.execute("COMMIT")
        except BaseException as exc:
            broken = conn.closed or conn.broken or watch.cut
            if broken:
                self._forget(conn)
            else:
                if transaction:
                    with contextlib.suppress(pg.Error, StoreError), self._dog.watch(conn):
                        conn.execute("ROLLBACK")
                self._give_back(conn)
            unknown = " (the outcome is unknown: the connection broke during COMMIT)" \
                if committing and broken else ""
            if watch.cut:
                raise self._unanswered(failure, unknown) from None
            if isinstance(exc, pg.OperationalError) and broken and retry and not committing:
                raise _Retry from None
            if isinstance(exc, pg.Error):
                raise StoreError(f"{failure}: {self.reason(exc)}{unknown}") from None
            if isinstance(exc, OSError):
                raise write_error(failure.removeprefix("could not write "), exc) from None
            raise
        self._give_back(conn)
        return result

    def query(self, sql: Any, args: Sequence[Any], failure: str, *, binary: bool = False,
              seconds: float | None = None) -> list[tuple[Any, ...]]:
        """One statement committed alone, its rows: the hot path (key lookups, the revoked-token
        check). It runs on a cursor kept with its connection, which saves about a third of the
        Python cost of a round trip; a broken connection is retried once (a read, or a single
        statement that never reached the server). ``seconds``: a shorter deadline."""
        pg = self._psycopg
        self._refuse_if_silent(failure)
        for attempt in (1, 2):
            conn = self._take()
            watch = self._dog.watch(conn, seconds=seconds)
            try:
                cur = self._cursors.get(id(conn))
                if cur is None:
                    cur = self._cursors[id(conn)] = conn.cursor()
                with watch:
                    rows: list[tuple[Any, ...]] = cur.execute(sql, args,
                                                              binary=binary).fetchall()
            except BaseException as exc:
                broken = conn.closed or conn.broken or watch.cut
                if broken:
                    self._forget(conn)
                else:
                    self._give_back(conn)
                if watch.cut:
                    raise self._unanswered(failure) from None
                if isinstance(exc, pg.OperationalError) and broken and attempt == 1:
                    continue
                if isinstance(exc, pg.Error):
                    raise StoreError(f"{failure}: {self.reason(exc)}") from None
                raise
            self._give_back(conn)
            return rows
        raise StoreError(f"{failure}: the PostgreSQL connection broke twice")  # pragma: no cover

    def fetch(self, name: bytes, sql: bytes, params: Sequence[str], failure: str
              ) -> list[tuple[bytes | None, ...]]:
        """A prepared one-statement read straight through libpq: the per-request checks (a key
        lookup, a revoked token) that must ask the database every time.

        Why not ``query``: psycopg's cursor waits for the answer in a poll loop and adapts
        every value in Python; a blocking ``PQexecPrepared`` (ctypes lets other threads run
        meanwhile) with binary results measured 31 us and 10 us of CPU per call against 244 us
        and 48 us (bench/RESULTS.md). Values come back as bytes in binary format: text as its
        UTF-8 bytes, bytea as is, NULL as None. Text parameters cannot carry NUL (libpq ends
        them there), so a parameter holding one is refused."""
        encoded = [p.encode("utf-8") for p in params]
        if any(b"\x00" in p for p in encoded):
            raise ValueError("a parameter holds NUL")
        self._refuse_if_silent(failure)
        for attempt in (1, 2):
            conn = self._take()
            watch = self._dog.watch(conn)
            try:
                with watch:
                    rows = self._fetch_on(conn, name, sql, encoded, failure)
            except _Retry:
                self._forget(conn)
                if watch.cut:
                    raise self._unanswered(failure) from None
                if attempt == 1:
                    continue
                raise StoreError(f"{failure}: the PostgreSQL connection broke") from None
            except BaseException:
                self._give_back(conn)
                raise
            self._give_back(conn)
            return rows
        raise StoreError(f"{failure}: the PostgreSQL connection broke twice")  # pragma: no cover

    def _fetch_on(self, conn: Conn, name: bytes, sql: bytes, params: list[bytes],
                  failure: str) -> list[tuple[bytes | None, ...]]:
        pq = self._psycopg.pq
        pgconn = conn.pgconn
        prepared = self._prepared.setdefault(id(conn), set())
        try:
            if name not in prepared:
                self._check(pgconn, pgconn.prepare(name, sql), failure)
                prepared.add(name)
            res = pgconn.exec_prepared(name, params, result_format=1)
            if res.error_field(pq.DiagnosticField.SQLSTATE) == b"26000":  # dropped behind us
                self._check(pgconn, pgconn.prepare(name, sql), failure)
                res = pgconn.exec_prepared(name, params, result_format=1)
        except self._psycopg.Error:
            raise _Retry from None  # no result at all: the connection is gone
        self._check(pgconn, res, failure)
        if res.status != pq.ExecStatus.TUPLES_OK:
            return []
        return [tuple(res.get_value(row, col) for col in range(res.nfields))
                for row in range(res.ntuples)]

    def _check(self, pgconn: Any, res: Any, failure: str) -> None:
        pq = self._psycopg.pq
        if res.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
            return
        if pgconn.status == pq.ConnStatus.BAD:
            raise _Retry
        message = (res.error_message or b"").decode("utf-8", "replace")
        raise StoreError(f"{failure}: {self.reason(Exception(message))}")

    def health_count(self, sql: LiteralString, failure: str) -> int | None:
        """A count for the health report, which runs on the event loop: None, asking nothing,
        while the database is silent or a wait has lasted a second already; else asked with a
        short deadline, so a database that freezes now holds the loop two seconds at most."""
        if self._dog.silence() is not None or self._dog.slowest() > 1.0:
            return None
        return int(self.query(sql, (), failure, seconds=HEALTH_SECONDS)[0][0])

    def run_autocommit(self, statement: LiteralString, failure: str) -> None:
        """One statement outside a transaction (VACUUM cannot run inside one)."""
        def work(conn: Conn) -> None:
            conn.execute(statement)
        self.run(work, failure, transaction=False)

    # ---- lifetime ----

    def retain(self) -> PgDatabase:
        with self._cond:
            if self._closed:
                raise StoreError("the PostgreSQL connection pool is closed")
            self._refs += 1
        return self

    def release(self) -> None:
        with self._cond:
            self._refs -= 1
            last = self._refs <= 0
        if last:
            self.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cursors.clear()
            self._prepared.clear()
            self._cond.notify_all()
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def silence(self) -> str | None:
        """Why calls fail at once (the database stopped answering), or None."""
        return self._dog.silence()

    def stats(self) -> dict[str, object]:
        with self._cond:
            return {"database": self.where, "connections_open": self._open,
                    "connections_idle": len(self._idle), "connections_max": self._max,
                    "server_version": self.server_version,
                    "timeout_seconds": self._dog.seconds, "waits_cut": self._dog.cuts}


class _Retry(Exception):
    """Internal: the connection broke before COMMIT; run the transaction again."""


# ---- schema migrations ---------------------------------------------------------------------

def schema_version(conn: Conn, component: str) -> int:
    """The highest migration applied for ``component`` (0 for a new database)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations "
                       "WHERE component = %s", (component,)).fetchone()
    return int(row[0]) if row else 0


def migrate(db: PgDatabase, component: str, migrations: Sequence[LiteralString],
            target: int | None = None) -> int:
    """Bring ``component`` up to ``target`` (default: every migration); returns the version.

    Migration N (1-based) brings the schema from N-1 to N. All of them run in one transaction
    under the advisory lock, so concurrent starters never apply one twice and a failure leaves
    the database as it was. A version above ``len(migrations)`` stops start-up."""
    latest = len(migrations)
    goal = latest if target is None else target

    def work(conn: Conn) -> int:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(MIGRATIONS_TABLE)
        version = schema_version(conn, component)
        if version > latest:
            raise StoreError(f"the PostgreSQL database at {db.where} has {component} schema "
                             f"version {version}, newer than this FerroHSM understands "
                             f"({latest}): a newer FerroHSM migrated it. Refusing to start; run "
                             "that newer version (or restore a backup taken before the upgrade)")
        for number in range(version + 1, goal + 1):
            conn.execute(migrations[number - 1])
            conn.execute("INSERT INTO schema_migrations (component, version) VALUES (%s, %s)",
                         (component, number))
        return max(version, goal)
    return db.run(work, f"schema migration of {component} failed")
