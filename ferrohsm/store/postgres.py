"""A key store in PostgreSQL, shared by any number of FerroHSM nodes (processes and hosts).

Shape of the data (pgschema.py): one ``keys`` row per key with the filterable fields as columns
and the whole authenticated record (records.py) as ``bytea``, tags in ``key_tags`` whose primary
key (tag, key_id) makes a tag filter an index range scan in id order, and ``key_meta`` for named
blobs. As in the SQLite store, the columns are not authenticated: they only steer filters and
name lookups, and every key returned is decoded and checked from its own record.

Why these choices:

* Compare-and-swap: ``update`` locks the row (``SELECT ... FOR UPDATE``), checks the revision and
  name of the VERIFIED stored record (records.check_update), then writes it, all in one READ
  COMMITTED transaction. Of two nodes holding the same revision, the second waits for the first's
  row lock, then sees the new revision and gets StaleRevision: none is lost. Inserts rely on the
  primary key and the unique name, so two nodes creating one name get one key and one NameTaken.
* A change made through any node (a revocation, a destruction, a rotation) is seen by every
  node as soon as it is acknowledged, without a round trip per ``get``: what is cached is the
  DECODED key with the row's ``xmin`` (the id of the transaction that wrote that row version;
  any UPDATE, ours, another node's or someone editing the table, gives a new one) and the keys
  generation (pgfresh.py) read before that row was. While a check (one per event-loop turn, or
  one per ``get`` elsewhere) returns the same generation, no key row changed and the entry is
  served from memory. Otherwise ``get`` sends the cached stamp and the database returns the
  record only when the row changed: one round trip of a few bytes, no MAC check and no JSON
  parse. The costs are measured by bench/bench_pg_state.py.
* Writes commit or roll back as a whole; a failure maps to StoreError naming the key (never the
  record), and a broken connection is retried when the write cannot have committed (pgdb.py).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from ..domain.errors import Conflict, NameTaken, NotFound, StoreError
from ..domain.model import Key, KeyFilter, Page
from .keyindex import page_of
from .keystore import KeyStore, check_limit, decode_page_token
from .pgdb import Conn, PgDatabase, driver
from .pgfresh import NO_GENERATION, Freshness, require_bump
from .pgschema import SCHEMA_VERSION, prepare
from .records import (
    RECORD_FAULTS,
    RecordAuthenticator,
    check_meta_name,
    check_new_key,
    check_update,
    is_key_id,
)
from .sqlselect import keyset_select

# The hot path (pgdb.fetch: libpq's prepared statements, $n parameters, binary results).
_GET = (b"fh_key_get", b"SELECT xmin::text, CASE WHEN xmin::text = $1 THEN NULL ELSE record END "
        b"FROM keys WHERE id = $2")
_GET_BY_NAME = (b"fh_key_by_name", b"SELECT id, xmin::text, CASE WHEN id = $1 AND xmin::text = "
                b"$2 THEN NULL ELSE record END FROM keys WHERE name = $3")
_LOCK_FOR_UPDATE = ("SELECT xmin::text, CASE WHEN xmin::text = %s THEN NULL ELSE record END, "
                    "(SELECT gen FROM ferrohsm_generation WHERE name = 'keys') "
                    "FROM keys WHERE id = %s FOR UPDATE")
_INSERT = ("INSERT INTO keys (id, name, state, algorithm, usage, revision, record) "
           "VALUES (%s, %s, %s, %s, %s, %s, %s)")
_INSERT_TAGS = "INSERT INTO key_tags (tag, key_id) VALUES (%s, %s)"
_DUPLICATES = {"keys_pkey": "id", "keys_name_unique": "name"}


class PostgresStore(KeyStore):
    """Keys in PostgreSQL; safe for many threads, processes and hosts on one database."""

    name = "postgres"
    fail_writes = False  # fault injection: fail between the key row and its tags (tests only)

    def __init__(self, db: PgDatabase, authenticator: RecordAuthenticator, *,
                 cache_size: int = 20_000, freshness: Freshness | None = None) -> None:
        super().__init__(authenticator)
        self._db = db.retain()
        self.freshness = freshness or Freshness(db)  # shared with the revoked-token list
        self._lock = threading.Lock()
        # id -> (row xmin, decoded key, keys generation read before the row was)
        self._cache: dict[str, tuple[str, Key, int]] = {}
        self._by_name: dict[str, str] = {}  # name -> id, for the keys in the cache
        self._cache_size = max(cache_size, 1)
        self._closed = False
        try:
            self.schema_version = prepare(db)
        except BaseException:
            self.close()
            raise

    @property
    def database(self) -> PgDatabase:
        """The connection pool, for the approval store and revoked-token list of this process."""
        return self._db

    # ---- the decoded-key cache -------------------------------------------------------------

    def _cached(self, key_id: str) -> tuple[str, Key, int] | None:
        return self._cache.get(key_id)

    def _generation(self) -> int:
        """The keys generation this thread's turn validated, without asking (list, writes)."""
        trusted = self.freshness.trusted()
        return NO_GENERATION if trusted is None else trusted.keys

    def _remember(self, stamp: str, key: Key, gen: int = NO_GENERATION) -> Key:
        """Cache ``key`` as the row version ``stamp``, vouched for by the keys generation
        ``gen`` read BEFORE the row was (NO_GENERATION: revalidate before serving it)."""
        with self._lock:
            if key.id not in self._cache and len(self._cache) >= self._cache_size:
                self._forget_locked(next(iter(self._cache)))
            self._forget_locked(key.id)
            self._cache[key.id] = (stamp, key, gen)
            if key.name is not None:
                self._by_name[key.name] = key.id
        return key

    def _forget(self, key_id: str) -> None:
        with self._lock:
            self._forget_locked(key_id)

    def _forget_locked(self, key_id: str) -> None:
        old = self._cache.pop(key_id, None)
        if old is not None and old[1].name is not None:
            self._by_name.pop(old[1].name, None)

    def _decode(self, key_id: str, stamp: str, record: bytes | None,
                cached: tuple[str, Key, int] | None, gen: int = NO_GENERATION) -> Key:
        """The key a row holds: ``cached`` (the entry whose stamp the query sent) when the row is
        unchanged and the database returned no record, else the record decoded and checked
        afresh; cached either way under ``gen``, the generation read before the row."""
        if cached is not None and cached[0] == stamp:  # the row is what we decoded before
            if cached[2] != gen:
                self._remember(stamp, cached[1], gen)
            return cached[1]
        if record is None:  # cannot happen: the query returns the record unless stamps match
            raise StoreError(f"key {key_id} was read without its record")
        try:
            key = self._records.decode(key_id, bytes(record))
        except BaseException:
            self._forget(key_id)
            raise
        return self._remember(stamp, key, gen)

    # ---- reading ---------------------------------------------------------------------------

    def _read(self, sql: Any, args: Sequence[Any], *, binary: bool = False
              ) -> list[tuple[Any, ...]]:
        """Rows through psycopg; ``binary`` for bulk records (bytea as is, not hex text)."""
        return self._db.query(sql, args, "cannot read the PostgreSQL key store", binary=binary)

    def _fetch(self, statement: tuple[bytes, bytes], args: Sequence[str]
               ) -> list[tuple[bytes | None, ...]]:
        return self._db.fetch(*statement, args, "cannot read the PostgreSQL key store")

    def get(self, key_id: str) -> Key:
        if not is_key_id(key_id):
            raise NotFound("no such key")
        gen = self.freshness.current().keys  # first the generation, then the row
        cached = self._cached(key_id)
        if cached is not None and cached[2] == gen:  # no key row changed since it was read
            return cached[1]
        rows = self._fetch(_GET, (cached[0] if cached else "", key_id))
        if not rows:
            self._forget(key_id)
            raise NotFound("no such key")
        stamp, record = rows[0]
        return self._decode(key_id, _text(stamp), record, cached, gen)

    def get_by_name(self, name: str) -> Key:
        if not isinstance(name, str) or "\x00" in name:
            raise NotFound("no such key")
        gen = self.freshness.current().keys
        known = self._by_name.get(name)
        cached = self._cached(known) if known else None
        if cached is not None and cached[2] == gen and cached[1].name == name:
            return cached[1]
        rows = self._fetch(_GET_BY_NAME, (known or "", cached[0] if cached else "", name))
        if not rows:
            raise NotFound("no such key")
        key_id, stamp = _text(rows[0][0]), _text(rows[0][1])
        key = self._decode(key_id, stamp, rows[0][2], cached if key_id == known else None, gen)
        if key.name != name:  # the name column was edited: the record is what counts
            raise NotFound("no such key")
        return key

    def list(self, filters: KeyFilter, limit: int = 100, page_token: str | None = None) -> Page:
        limit = check_limit(limit)
        after = decode_page_token(page_token)
        if _impossible(filters):
            return page_of((), None, False)
        gen = self._generation()
        sql, args = _select("k.id, k.xmin::text AS stamp", filters, after)
        # The page as ONE text value ("id:stamp,id:stamp,..."): psycopg's pure-Python driver
        # pays ~10 us per value it loads, so 1000 rows of two columns cost 20 ms, one string 0.1
        # (ids are UUIDs and stamps numbers: neither holds ':' or ',').
        joined = self._read(f"SELECT string_agg(p.id || ':' || p.stamp, ',' ORDER BY p.id) "  # noqa: S608  fixed fragments; values bind to %s
                            f"FROM ({sql} LIMIT %s) AS p", (*args, limit + 1))[0][0]
        rows = [tuple(item.split(":")) for item in joined.split(",")] if joined else []
        page = rows[:limit]
        fresh = self._records_of([key_id for key_id, stamp in page
                                  if (self._cached(key_id) or ("", None))[0] != stamp])
        keys: list[Key] = []
        unreadable: list[str] = []
        for key_id, stamp in page:
            cached = self._cached(key_id)
            if cached is not None and cached[0] == stamp:
                keys.append(cached[1])
                continue
            if key_id not in fresh:  # deleted since the page was read
                continue
            try:
                keys.append(self._decode(key_id, *fresh[key_id], None, gen))
            except RECORD_FAULTS:
                unreadable.append(key_id)
        return page_of(tuple(keys), page[-1][0] if page else None, len(rows) > limit,
                       tuple(unreadable), filters)

    def _records_of(self, ids: Sequence[str]) -> dict[str, tuple[str, bytes]]:
        """The stored (stamp, record) of the keys a page lists but the cache does not hold as
        they are: a page of cached keys costs one small query, and only changed records travel."""
        if not ids:
            return {}
        rows = self._read("SELECT id, xmin::text, record FROM keys WHERE id = ANY(%s)",
                          (list(ids),), binary=True)
        return {key_id: (stamp, record) for key_id, stamp, record in rows}

    def count(self, filters: KeyFilter | None = None) -> int:
        f = filters or KeyFilter()
        if _impossible(f):
            return 0
        sql, args = _select("count(*)", f, None, order=False)
        return int(self._read(sql, args)[0][0])

    def get_meta(self, name: str) -> bytes | None:
        check_meta_name(name)
        rows = self._read("SELECT value FROM key_meta WHERE name = %s", (name,))
        return bytes(rows[0][0]) if rows else None

    # ---- writing ---------------------------------------------------------------------------

    def _write(self, work: Any, what: str) -> Any:
        if self._closed:
            raise StoreError("the PostgreSQL store is closed")
        return self._db.run(work, f"could not write {what}")

    def _fault_point(self) -> None:
        if self.fail_writes:
            raise OSError(errno.EIO, "injected write failure")

    def create(self, key: Key) -> Key:
        stored = replace(check_new_key(key), revision=1)
        stamp = self._write(lambda conn: self._insert(conn, stored), f"key {stored.id}")
        return self._remember(stamp, stored)

    def bulk_create(self, keys: Iterable[Key]) -> None:
        """Insert many new keys in ONE transaction: all of them or none (imports, benchmarks)."""
        batch = [replace(check_new_key(k), revision=1) for k in keys]

        def work(conn: Conn) -> None:
            with _duplicates_named(batch):
                with conn.cursor() as cur:
                    cur.executemany(_INSERT, [self._row(k) for k in batch])
                    cur.executemany(_INSERT_TAGS, [(t, k.id) for k in batch for t in k.tags])
            self._fault_point()
        self._write(work, f"{len(batch)} new keys")

    def _row(self, key: Key) -> tuple[Any, ...]:
        return (key.id, key.name, key.state.value, key.algorithm, key.usage, key.revision,
                self._records.encode(key))

    def _insert(self, conn: Conn, key: Key) -> str:
        """The primary key and the unique name decide duplicates, on every node at once; the
        constraint that fired says which error it is (the id is checked first, as elsewhere)."""
        with _duplicates_named([key]):
            row = conn.execute(_INSERT + " RETURNING xmin::text", self._row(key)).fetchone()
        self._fault_point()
        if key.tags:
            with conn.cursor() as cur:
                cur.executemany(_INSERT_TAGS, [(tag, key.id) for tag in key.tags])
        assert row is not None  # noqa: S101  narrows a type for mypy: RETURNING gives one row
        return str(row[0])

    def update(self, key: Key) -> Key:
        stored = replace(key, revision=key.revision + 1)

        def work(conn: Conn) -> str:
            if not is_key_id(key.id):
                raise NotFound("no such key")
            cached = self._cached(key.id)
            row = conn.execute(_LOCK_FOR_UPDATE, (cached[0] if cached else "", key.id)).fetchone()
            if row is None:
                raise NotFound("no such key")
            current = self._decode(key.id, row[0], row[1], cached)  # refuses a failing record
            check_update(current, key)
            done = conn.execute(
                "UPDATE keys SET state = %s, algorithm = %s, usage = %s, revision = %s, "
                "record = %s WHERE id = %s RETURNING xmin::text",
                (stored.state.value, stored.algorithm, stored.usage, stored.revision,
                 self._records.encode(stored), key.id)).fetchone()
            self._fault_point()
            if current.tags != key.tags:
                conn.execute("DELETE FROM key_tags WHERE key_id = %s", (key.id,))
                with conn.cursor() as cur:
                    cur.executemany(_INSERT_TAGS, [(tag, key.id) for tag in key.tags])
            require_bump(conn, "keys", -1 if row[2] is None else int(row[2]))  # else no node re-reads
            assert done is not None  # noqa: S101  narrows a type for mypy: the row is locked
            return str(done[0])
        try:
            stamp = self._write(work, f"key {key.id}")
        except BaseException:
            self._forget(key.id)  # it may hold what we just failed to commit
            raise
        return self._remember(stamp, stored)

    def delete(self, key_id: str) -> None:
        """Remove a key record entirely (tests and tooling); its tags go by ON DELETE CASCADE."""
        def work(conn: Conn) -> bool:
            return conn.execute("DELETE FROM keys WHERE id = %s RETURNING 1",
                                (key_id,)).fetchone() is not None
        gone = is_key_id(key_id) and self._write(work, f"deletion of key {key_id}")
        self._forget(key_id)
        if not gone:
            raise NotFound("no such key")

    def put_meta(self, name: str, value: bytes) -> None:
        check_meta_name(name)

        def work(conn: Conn) -> None:
            conn.execute("INSERT INTO key_meta (name, value) VALUES (%s, %s) "
                         "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                         (name, bytes(value)))
            self._fault_point()
        self._write(work, f"meta {name}")

    # ---- lifecycle -------------------------------------------------------------------------

    def scrub(self) -> None:
        """VACUUM the keys table so the row versions that held erased material are reclaimed.
        PostgreSQL does not zero reclaimed space, and its WAL, replicas and backups keep old
        versions for as long as they are kept: the README says so (PostgreSQL section)."""
        self._db.run_autocommit("VACUUM keys", "could not vacuum the keys table")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cache.clear()
            self._by_name.clear()
        self._db.release()

    def describe(self) -> dict[str, object]:
        info: dict[str, object] = {"backend": self.name, **self._db.stats(),
                                   "schema_version": SCHEMA_VERSION,
                                   "cached_keys": len(self._cache), **self.freshness.stats()}
        try:
            count = self._db.health_count("SELECT count(*) FROM keys",
                                          "cannot read the PostgreSQL key store")
        except StoreError as exc:
            info["reachable"], info["reason"] = False, exc.message
            return info
        silence = self._db.silence()
        if silence is not None:
            info["reachable"], info["reason"] = False, silence
        elif count is None:  # slow, not silent (yet): no count, and no alarm
            info["keys_not_counted"] = "a PostgreSQL wait has lasted over a second"
        else:
            info["keys"] = count
        return info

    # ---- record integrity ------------------------------------------------------------------

    def _stored_ids(self) -> Sequence[str]:
        return [row[0] for row in self._read("SELECT id FROM keys ORDER BY id", ())]

    def _read_record(self, key_id: str) -> bytes:
        if not is_key_id(key_id):
            raise NotFound("no such key")
        rows = self._read("SELECT record FROM keys WHERE id = %s", (key_id,))
        if not rows:
            raise NotFound("no such key")
        return bytes(rows[0][0])

    def _reload(self, key_id: str) -> Key:
        self._forget(key_id)
        return self.get(key_id)

    def _replace_record(self, key_id: str, old: bytes, new: bytes) -> None:
        key = self._records.decode(key_id, new)

        def work(conn: Conn) -> Any:
            return conn.execute("UPDATE keys SET record = %s, revision = %s WHERE id = %s AND "
                                "record = %s RETURNING xmin::text",
                                (new, key.revision, key_id, old)).fetchone()
        row = self._write(work, f"key {key_id}")
        if row is None:
            self._forget(key_id)
            raise Conflict(f"the record of key {key_id} changed while it was rewritten")
        self._remember(str(row[0]), key)


@contextmanager
def _duplicates_named(keys: Sequence[Key]) -> Iterator[None]:
    """Turn a unique violation on insert into Conflict (same id) or NameTaken (same name)."""
    try:
        yield
    except driver().errors.UniqueViolation as exc:
        column = _DUPLICATES.get(exc.diag.constraint_name or "")
        single = keys[0] if len(keys) == 1 else None
        if column == "name":
            raise NameTaken(f"a key named {single.name!r} already exists" if single else
                            "a name in the batch is taken (by a stored key or the batch)") from None
        if column == "id":
            raise Conflict(f"a key with id {single.id} already exists" if single else
                           "an id in the batch exists already (or twice in it)") from None
        raise


def _text(value: bytes | None) -> str:
    """A text column from pgdb.fetch (binary results: its UTF-8 bytes); never NULL here."""
    return (value or b"").decode("utf-8")


def _impossible(f: KeyFilter) -> bool:
    """A filter value PostgreSQL text cannot hold (NUL) matches nothing, as in every store."""
    return any(isinstance(v, str) and "\x00" in v
               for v in (f.tag, f.name_prefix, f.algorithm, f.usage))


def _select(columns: str, f: KeyFilter, after: str | None, *, order: bool = True
            ) -> tuple[str, list[Any]]:
    return keyset_select(columns, f, after, mark="%s", prefix="left(k.name, %s) = %s", order=order)
