"""PostgresSink: the audit log of many nodes in one PostgreSQL table (``[audit].sink = "postgres"``).

One linear chain for the whole cluster, ordered by the database. Each group-commit batch of a
node is one transaction under a transaction-scoped advisory lock (``pg_advisory_xact_lock``,
released by COMMIT or ROLLBACK, so a node that dies mid-batch holds nothing). It is first tried in
one round trip: the lock, the batch sealed after the head this node last wrote and inserted only
if that is still the stored head, and the COMMIT, pipelined. When another node wrote meanwhile
(nothing was inserted), a second transaction takes the lock, reads the last (seq, hash), follows
it (its record authenticated first, see sinkbase.py), seals its records after it, inserts them
with one statement and commits. seq is the primary key besides: two records at one seq can never
both be committed, whatever else goes wrong. COMMIT
with ``synchronous_commit = on`` is the durability point: a ticket or an ``append`` succeeds only
after it. Group commit per node works as it does per process: the writers waiting while one
batch commits form the next batch.

Each row keeps the record's exact stored line (``record``), as the SQLite sink does, so an export
(``ferrohsm audit export`` through any node) is what the file sink would have written and the
offline verifier checks it unchanged; seq is the primary key, so two nodes can never both commit
a record at one seq, whatever else goes wrong.

Checkpoints are signed by each node with the signing key in its own data directory and appended to
its own ``checkpoints.jsonl`` (anchor.py): each is a node's signed statement of the cluster log's
head as it saw it (each checkpoint tick first adopts the stored head, other nodes' records
included), kept outside the database, so someone who can rewrite the database cannot also
rewrite the anchors. A node refuses to start on a log shorter than its last checkpoint.

Failures: a database that cannot be reached, refuses a statement or loses the connection makes the
batch fail (its records are refused, ``degraded()`` says why) and the next batch reconnects and
re-reads the head, so a COMMIT whose outcome was lost with the connection cannot fork the chain.
A stored head behind what this node wrote (a restored or failed-over database that lost commits)
fails closed until a restart. The DSN (with its password) never appears in a message.

psycopg (3) is imported only when this sink is configured; its own tables are created by numbered
migrations recorded in ``audit_schema_migrations`` (the key store keeps its own table), and a node
refuses a schema newer than it knows. Retention pruning is not offered for this sink.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from ..domain.errors import AuditUnavailable, ConfigError, StoreError
from .anchor import Anchor
from .chain import GENESIS_HASH, PreparedEvent, check_line, failed_check
from .sinkbase import ChainedSink, stored_record

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("ferrohsm.audit")


_logged: dict[str, float] = {}  # when each kind of failure was last logged
NO_ANSWER = "audit record could not be made durable: the audit database does not answer"
LOCK_HELD = ("audit record could not be made durable: the audit log's append lock is held by "
             "another session (the last wait for it timed out); refused without waiting")


def unavailable(what: str, exc: BaseException) -> AuditUnavailable:
    """The refusal for a failure of the audit database: what failed, for the caller; the
    driver's words (the database's address among them) for the operator, in the server log,
    once a second at most per kind (an outage fails every request)."""
    now = time.monotonic()
    if now - _logged.get(what, -1.0) >= 1.0:
        _logged[what] = now
        log.error("audit: %s: %s", what, reason(exc))
    return AuditUnavailable(f"{what} (the server log says why)")

LOCK_CLASS = 0x41554454  # "AUDT": the first key of the two-key advisory locks below
LOCK_APPEND = 1          # every batch, and the opener that writes the genesis record
LOCK_MIGRATE = 2         # schema changes
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
CREATE TABLE audit_log (
    seq bigint PRIMARY KEY,
    ts text NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    key_id text,
    outcome text NOT NULL,
    hash text NOT NULL,
    record text NOT NULL
);
CREATE INDEX audit_log_ts ON audit_log (ts);
CREATE INDEX audit_log_action ON audit_log (action);
CREATE INDEX audit_log_key_id ON audit_log (key_id);
CREATE TABLE audit_meta (name text PRIMARY KEY, value text NOT NULL);
"""),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]
INSERT = ("INSERT INTO audit_log (seq, ts, actor, action, key_id, outcome, hash, record) "
          "SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], "
          "%s::text[], %s::text[], %s::text[])")
HEAD = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"
# The same INSERT, only if the stored head is still "seq:hash" (NULL: the table is empty).
INSERT_AFTER = ("INSERT INTO audit_log (seq, ts, actor, action, key_id, outcome, hash, record) "
                "SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], "
                "%s::text[], %s::text[], %s::text[], %s::text[]) WHERE (SELECT seq::text || ':' "
                "|| hash FROM audit_log ORDER BY seq DESC LIMIT 1) IS NOT DISTINCT FROM %s")


class Deadlines(Protocol):
    """A deadline on each wait for the database (store/pgwatch.py's Watchdog, given by the
    composition root): ``watch(conn)`` cuts the session of a wait that outlives it, and
    raises StoreError at once while the database is known not to answer."""

    def watch(self, conn: Any, *, seconds: float | None = None, probe: bool = False) -> Any: ...

    def offer_probe(self, probe: Callable[[], None]) -> None: ...

    def silence(self) -> str | None: ...

    def connect_timeout(self) -> int: ...

    def session_settings(self, conn: Any) -> None: ...


class _Unwatched:
    """The watch of a sink given no Deadlines (offline tools): waits as long as libpq does."""

    cut = False

    def __enter__(self) -> _Unwatched:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def driver() -> Any:
    """The psycopg module, imported now (only a configured postgres sink or store needs it)."""
    try:
        import psycopg
    except ImportError:
        raise ConfigError('[audit].sink = "postgres" needs psycopg: '
                          'pip install "ferrohsm[postgres]"') from None
    return psycopg


def reason(exc: BaseException) -> str:
    """What went wrong, without the DSN: the SQLSTATE and the server's first line."""
    state = getattr(exc, "sqlstate", None)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return f"{first} (SQLSTATE {state})" if state else first


def connect(dsn: str, *, autocommit: bool = False, timeout: float = 10.0,
            durable: bool = True) -> psycopg.Connection:
    """A connection whose COMMIT returns once the WAL is flushed (``synchronous_commit = on``,
    whatever the server's default; ``off`` only for a sink opened with ``durable=False``), or
    AuditUnavailable."""
    psycopg_ = driver()
    try:
        conn: psycopg.Connection = psycopg_.connect(dsn, autocommit=autocommit,
                                                    connect_timeout=max(1, int(timeout)),
                                                    application_name="ferrohsm-audit")
        conn.execute(b"SET synchronous_commit TO " + (b"on" if durable else b"off"))
        if not autocommit:
            conn.commit()
    except psycopg_.Error as exc:
        raise unavailable("cannot reach the audit database", exc) from None
    return conn


def migrate(conn: psycopg.Connection) -> None:
    """Apply the numbered migrations this version knows, under an advisory lock (nodes starting
    together apply each once); refuse a schema newer than this version. Commits."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, LOCK_MIGRATE))
    conn.execute("CREATE TABLE IF NOT EXISTS audit_schema_migrations (version integer PRIMARY "
                 "KEY, applied_at timestamptz NOT NULL DEFAULT now())")
    current = _schema_version(conn)
    if current > SCHEMA_VERSION:
        conn.rollback()
        raise _newer(current)
    for version, sql in MIGRATIONS:
        if version > current:
            conn.execute(sql.encode())
            conn.execute("INSERT INTO audit_schema_migrations (version) VALUES (%s)", (version,))
            log.info("audit database: applied migration %d", version)
    conn.commit()


def refuse_newer_schema(dsn: str, timeout: float) -> None:
    """Refuse a schema newer than this version before this node makes anything of its own (its
    signing key, its checkpoint file): a node that cannot join leaves nothing behind. Reads
    only; ``migrate`` checks again under its lock."""
    conn = connect(dsn, autocommit=True, timeout=timeout)
    try:
        row = conn.execute("SELECT to_regclass('audit_schema_migrations') IS NOT NULL").fetchone()
        current = _schema_version(conn) if row and row[0] else 0
    except driver().Error as exc:
        raise AuditUnavailable(f"cannot open the audit database: {reason(exc)}") from None
    finally:
        conn.close()
    if current > SCHEMA_VERSION:
        raise _newer(current)


def _schema_version(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT max(version) FROM audit_schema_migrations").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _newer(current: int) -> AuditUnavailable:
    return AuditUnavailable(f"the audit database schema is version {current}, newer than the "
                            f"{SCHEMA_VERSION} this FerroHSM knows: upgrade FerroHSM")


def _columns(sealed: list[tuple[dict[str, Any], bytes]]) -> tuple[list[Any], ...]:
    """The batch as one array per column, for one ``INSERT ... SELECT FROM unnest``."""
    names = ("seq", "ts", "actor", "action", "key_id", "outcome", "hash")
    columns: tuple[list[Any], ...] = tuple([record[n] for record, _ in sealed] for n in names)
    return (*columns, [line.decode("ascii") for _, line in sealed])


class PostgresSink(ChainedSink):
    """Audit log in PostgreSQL, shared by every node; see the module docstring."""

    backend = "postgres"

    def __init__(self, dsn: str, hmac_key: bytes, *, directory: str, durable: bool = True,
                 anchor_every: int = 1000, signing_key_path: str | None = None,
                 checkpoint_path: str | None = None,
                 clock: Callable[[], datetime] | None = None,
                 new_id: Callable[[], str] | None = None, max_group: int = 256,
                 checkpoint_interval: float = 0.0, connect_timeout: float = 10.0,
                 watchdog: Deadlines | None = None) -> None:
        if not dsn:
            raise ConfigError('[audit].sink = "postgres" needs a DSN (see [storage] '
                              "postgres_dsn_env)")
        self._psycopg = driver()
        refuse_newer_schema(dsn, connect_timeout)
        os.makedirs(directory, mode=0o700, exist_ok=True)  # this node's checkpoints and key
        super().__init__(hmac_key, anchor=Anchor(directory, key_path=signing_key_path,
                                                 checkpoint_path=checkpoint_path, durable=durable),
                         durable=durable, anchor_every=anchor_every, clock=clock, new_id=new_id,
                         max_group=max_group, checkpoint_interval=checkpoint_interval)
        self._dsn = dsn
        self._timeout = connect_timeout if watchdog is None else min(
            connect_timeout, watchdog.connect_timeout())
        self._conn: psycopg.Connection | None = None
        self._sent: list[tuple[dict[str, Any], bytes]] | None = None  # the batch in flight
        self._reader: psycopg.Connection | None = None
        self._read_lock = threading.Lock()
        self._watchdog = watchdog
        self._contended = False  # the last wait for the append lock timed out (_insert)
        if watchdog is not None:
            watchdog.offer_probe(self._ask_database)
        try:
            self._open()
            self._checkpoint_opened()
        except self._psycopg.Error as exc:
            self._abandon()
            raise AuditUnavailable(f"cannot open the audit database: {reason(exc)}") from None
        except BaseException:
            self._abandon()
            raise

    @property
    def dsn(self) -> str:
        """For start-up readers of the whole log (integrity/); never to be printed."""
        return self._dsn

    # ---- opening ------------------------------------------------------------------------------

    def _open(self) -> None:
        """Migrate, then (under the append lock, so two nodes starting together write one
        genesis record) read or create the log id and the head."""
        conn = self._writer()
        migrate(conn)
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, LOCK_APPEND))
        row = conn.execute("SELECT value FROM audit_meta WHERE name = 'log_id'").fetchone()
        head = conn.execute(HEAD).fetchone()
        if head is None:
            self._log_id = str(row[0]) if row else self._new_id()
            self._check_against_checkpoint()
            if row is None:
                conn.execute("INSERT INTO audit_meta VALUES ('log_id', %s), ('schema', '1')",
                             (self._log_id,))
            self._next_seq, self._next_hash = 0, GENESIS_HASH
            sealed = [self._seal(self._system_event("audit.genesis", "audit log created",
                                                    backend="postgres"))]
            conn.execute(INSERT, _columns(sealed))
            self._commit(conn)
            self._set_head((self._next_seq, self._next_hash))
            self._records_written += 1
            self._syncs += 1  # a commit of its own, counted with the group commits
            return
        conn.rollback()
        text = self._record_at(conn, int(head[0]))
        conn.rollback()  # no transaction left open between batches
        result = check_line(text, self._key) if text is not None else "missing"
        if isinstance(result, str):
            raise AuditUnavailable(f"the last record in the audit database fails its integrity "
                                   f"check ({failed_check(result)}); run `ferrohsm audit verify` on an export")
        self._set_head(result)
        self._log_id = str(row[0]) if row else ""
        self._check_against_checkpoint()

    # ---- connections --------------------------------------------------------------------------

    def _watch(self, conn: psycopg.Connection) -> Any:
        return _Unwatched() if self._watchdog is None else self._watchdog.watch(conn)

    def _refuse_if_silent(self, what: str) -> None:
        """No new session, no statement, while the database is known not to answer."""
        silence = None if self._watchdog is None else self._watchdog.silence()
        if silence is not None:
            raise unavailable(what, StoreError(silence))

    def _ask_database(self) -> None:
        """One question on a new session while the database is silent (store/pgwatch.py);
        not sinkbase's ``_probe``, which asks whether the log takes records again."""
        assert self._watchdog is not None  # noqa: S101  offered only with one
        conn = connect(self._dsn, autocommit=True, timeout=self._timeout)
        try:
            with self._watchdog.watch(conn, probe=True):
                conn.execute("SELECT 1")
        finally:
            conn.close()

    def _writer(self) -> psycopg.Connection:
        """The connection batches are written on (under _io_lock); reconnect after a failure."""
        if self._conn is None or self._conn.closed:
            self._conn = self._session(autocommit=False)
        return self._conn

    def _session(self, *, autocommit: bool) -> psycopg.Connection:
        """A new session, with the watchdog's settings (the server's own deadline on each
        statement, a lock wait included: store/pgwatch.py) when there is one."""
        conn = connect(self._dsn, autocommit=autocommit, timeout=self._timeout,
                       durable=self.durable)
        if self._watchdog is None:
            return conn
        try:
            with self._watchdog.watch(conn):
                conn.autocommit = True  # a refused optional setting leaves no transaction
                self._watchdog.session_settings(conn)
                conn.autocommit = autocommit
        except (self._psycopg.Error, StoreError) as exc:
            conn.close()
            raise unavailable("cannot reach the audit database", exc) from None
        return conn

    def _drop_writer(self) -> None:
        """After a failed statement: roll back, or (a broken connection) start afresh next
        time; either way the next batch re-reads the head."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.rollback()
            self._conn = conn
        except self._psycopg.Error:
            conn.close()

    # ---- writing ------------------------------------------------------------------------------

    def _persist(self, events: list[PreparedEvent], sync: bool = True) -> list[dict[str, Any]]:
        head = (self._next_seq, self._next_hash)
        self._sent = None
        self._refuse_if_silent(NO_ANSWER)
        watch: Any = _Unwatched()
        try:
            try:
                conn = self._writer()
                with (watch := self._watch(conn)):
                    sealed = self._insert(conn, events)
            except (self._psycopg.OperationalError, StoreError) as exc:
                if isinstance(exc, self._psycopg.errors.QueryCanceled):
                    self._contended = True  # the lock was held past statement_timeout
                if watch.cut or isinstance(exc, StoreError | self._psycopg.errors.QueryCanceled):
                    raise  # no answer, or none in time (a lock held): not again on a new session
                # The session broke, or psycopg gave up on it mid-pipeline ("cannot exit
                # pipeline mode while busy" after the backend was terminated: the connection
                # then says neither closed nor broken), or the database refused: whichever, a
                # new session finds out under the lock whether the batch is stored.
                sent, self._next_seq, self._next_hash = self._sent, *head
                self._drop_writer()
                conn = self._writer()
                with (watch := self._watch(conn)):
                    sealed = self._insert_locked(conn, events, lost=sent)
        except (self._psycopg.Error, StoreError) as exc:
            self._drop_writer()
            if watch.cut or isinstance(exc, StoreError):  # StoreError: silent (pgwatch.py)
                self._next_seq, self._next_hash = head  # the next batch re-reads it
                raise unavailable(NO_ANSWER, exc) from None
            raise unavailable("audit record could not be made durable: the audit database "
                              "refused it", exc) from None
        except BaseException:
            self._drop_writer()
            raise
        return [record for record, _ in sealed]

    def _insert(self, conn: psycopg.Connection, events: list[PreparedEvent]
                ) -> list[tuple[dict[str, Any], bytes]]:
        """The batch, stored and committed. After a wait for the append lock timed out (a
        session holding it stopped, or stuck), the lock is only TRIED until it is had again:
        every batch behind it (each turn's, queued on the committer thread) would otherwise wait
        ``statement_timeout`` in its turn while another session sits on the lock (an outside
        red team found the event loop stalled so, when it wrote the batch itself); refused at
        once meanwhile."""
        if not self._contended:
            sealed = self._insert_at_head(conn, events)
            return sealed if sealed is not None else self._insert_locked(conn, events)
        row = conn.execute("SELECT pg_try_advisory_xact_lock(%s, %s)",
                           (LOCK_CLASS, LOCK_APPEND)).fetchone()
        if not (row and row[0]):
            conn.rollback()
            raise unavailable(LOCK_HELD, TimeoutError("the append lock is held by another "
                                                      "session"))
        sealed = self._insert_locked(conn, events)  # held: its own wait for the lock is none
        self._contended = False
        return sealed

    def _insert_at_head(self, conn: psycopg.Connection, events: list[PreparedEvent]
                        ) -> list[tuple[dict[str, Any], bytes]] | None:
        """The batch chained after the head this node last wrote, inserted only if that is
        still the stored head, and committed: BEGIN, the lock, the INSERT and the COMMIT in one
        round trip (the INSERT's snapshot is taken once the lock is granted). None (nothing
        written) when another node wrote meanwhile."""
        head = (self._next_seq, self._next_hash)
        sealed = self._seal_sent(events)
        try:
            with conn.pipeline():
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, LOCK_APPEND))
                cursor = conn.execute(INSERT_AFTER, (*_columns(sealed),
                                                     f"{head[0]}:{head[1]}" if head[0] else None))
                self._commit(conn)
            inserted = cursor.rowcount
        except self._psycopg.errors.UniqueViolation:  # a writer that does not take the lock
            conn.rollback()
            inserted = 0
        if inserted == len(sealed):
            return sealed
        self._next_seq, self._next_hash = head
        return None

    def _insert_locked(self, conn: psycopg.Connection, events: list[PreparedEvent],
                       lost: list[tuple[dict[str, Any], bytes]] | None = None
                       ) -> list[tuple[dict[str, Any], bytes]]:
        """Under the advisory lock: follow the stored head, then write. Two round trips:
        BEGIN, the lock and the head in one (separate statements, so the head is read with a
        snapshot taken after the lock was granted); the INSERT and the COMMIT in the other.

        ``lost``: the batch as a broken session last sent it (a database restart cuts idle
        sessions, found cut only when used). Under the lock that attempt's transaction has
        ended (it took the lock first), so its last record, if stored, says it committed:
        then it is returned as it was, not written twice."""
        with conn.pipeline():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, LOCK_APPEND))
            if lost and self._stored(conn, lost[-1][0]):
                conn.rollback()
                self._next_seq, self._next_hash = lost[-1][0]["seq"], lost[-1][0]["hash"]
                return lost
            self._follow_db(conn)
            sealed = self._seal_sent(events)
            conn.execute(INSERT, _columns(sealed))
            self._commit(conn)
        return sealed

    def _stored(self, conn: psycopg.Connection, record: dict[str, Any]) -> bool:
        """Whether ``record`` is stored as it was sealed (its seq holds its hash)."""
        text = self._record_at(conn, record["seq"])
        return text is not None and check_line(text, self._key) == (record["seq"],
                                                                    record["hash"])

    def _seal_sent(self, events: list[PreparedEvent]) -> list[tuple[dict[str, Any], bytes]]:
        """Seal a batch about to be sent, and remember it until it is known stored or not."""
        self._sent = [self._seal(event) for event in events]
        return self._sent

    def _commit(self, conn: psycopg.Connection) -> None:
        """COMMIT: the durability point (synchronous_commit = on); a method so tests can make
        it fail."""
        conn.commit()

    def _follow_db(self, conn: psycopg.Connection) -> None:
        """Inside the batch's transaction: continue after another node's records (one indexed
        lookup when there are none)."""
        row = conn.execute(HEAD).fetchone()
        stored = (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))
        if stored == (self._next_seq, self._next_hash):
            return
        if row is None:
            self._follow(stored)
            return
        text = self._record_at(conn, stored[0])
        self._follow(check_line(text, self._key) if text is not None else "missing")

    def _follow_storage(self) -> None:
        self._refuse_if_silent("cannot read the audit database")
        try:
            conn = self._writer()
            try:
                with self._watch(conn):
                    self._follow_db(conn)
            finally:
                conn.rollback()
        except (self._psycopg.Error, StoreError) as exc:
            self._drop_writer()
            raise unavailable("cannot read the audit database", exc) from None

    @staticmethod
    def _record_at(conn: psycopg.Connection, seq: int) -> bytes | None:
        row = conn.execute("SELECT record FROM audit_log WHERE seq = %s", (seq,)).fetchone()
        return None if row is None else str(row[0]).encode("ascii")

    # ---- reading ------------------------------------------------------------------------------

    def _read_rows(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Rows from the reader connection (autocommit: every read sees every commit so far,
        another node's too)."""
        with self._read_lock:
            # A read is repeated once on a new session: after a database restart the idle
            # one is found cut only now (not after a cut of the watchdog's: no answer).
            for attempt in (1, 2):
                self._refuse_if_silent("cannot read the audit database")
                watch: Any = _Unwatched()
                try:
                    if self._reader is None or self._reader.closed:
                        self._reader = self._session(autocommit=True)
                    with (watch := self._watch(self._reader)):
                        return list(self._reader.execute(sql.encode(), args).fetchall())
                except (self._psycopg.Error, StoreError) as exc:
                    if self._reader is not None:
                        self._reader.close()
                    self._reader = None
                    if (attempt == 1 and isinstance(exc, self._psycopg.OperationalError)
                            and not watch.cut):
                        continue
                    raise unavailable("cannot read the audit database", exc) from None
            raise AssertionError("unreachable")  # pragma: no cover

    def read(self, after_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self._read_rows("SELECT record FROM audit_log WHERE seq > %s ORDER BY seq "
                               "LIMIT %s", (after_seq, limit))
        return [stored_record(text, "the audit database") for (text,) in rows]

    def _hash_at(self, seq: int) -> str | None:
        rows = self._read_rows("SELECT record FROM audit_log WHERE seq = %s", (seq,))
        if not rows:
            return None
        result = check_line(str(rows[0][0]).encode("ascii"), self._key)
        return result[1] if isinstance(result, tuple) else "invalid"

    def _close_storage(self) -> None:
        for conn in (self._conn, self._reader):
            if conn is not None:
                try:
                    conn.close()
                except self._psycopg.Error:
                    pass
        self._conn = self._reader = None


def stored_lines(dsn: str, actions: tuple[str, ...] = (), limit: int | None = None,
                 batch: int = 5000) -> Iterator[bytes]:
    """The stored lines in seq order (only ``actions`` when given; at most ``limit``), without
    opening a sink: for start-up checks (integrity/logscan.py) and exports in tests. Nothing
    when the table does not exist yet."""
    conn = connect(dsn, autocommit=True)
    psycopg_ = driver()
    try:
        exists = conn.execute("SELECT to_regclass('audit_log')").fetchone()
        if not exists or exists[0] is None:
            return
        where = "AND action = ANY(%s)" if actions else ""
        after, left = 0, limit
        while left is None or left > 0:
            size = batch if left is None else min(batch, left)
            args: tuple[Any, ...] = (after, list(actions), size) if actions else (after, size)
            rows = conn.execute(f"SELECT seq, record FROM audit_log WHERE seq > %s {where} "  # noqa: S608  # a constant
                                "ORDER BY seq LIMIT %s", args).fetchall()
            for seq, text in rows:
                yield str(text).encode("ascii")
                after = int(seq)
            if len(rows) < size:
                return
            left = None if left is None else left - len(rows)
    except psycopg_.Error as exc:
        raise unavailable("cannot read the audit database", exc) from None
    finally:
        conn.close()
