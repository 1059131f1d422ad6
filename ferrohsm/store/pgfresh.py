"""How a node on PostgreSQL knows its cached keys and revoked-token answers are still current,
with one round trip per event-loop turn instead of one per lookup.

The promise (README, "Running several nodes"): a key revoked or destroyed, or a token revoked,
through ANY node is refused by every node from the first request sent after that change was
acknowledged. Asking the database on every lookup keeps it, at ~110 us a question, twice a
request. Here is what keeps it more cheaply:

* A change generation per table (pgschema migration 2): a statement-level trigger on ``keys``
  and on ``revoked_tokens`` bumps its row of ``ferrohsm_generation`` inside the writer's own
  transaction. Whoever writes (a node, the scheduler, a restore, SQL typed at psql), the new
  number becomes visible exactly when the change does, at commit.
* ``Freshness.check`` reads both numbers in ONE prepared statement. Caches tag what they hold
  with the generation read BEFORE the data was read, and an entry serves only a reader whose
  own check returned that same number: nothing changed in between, so the entry is at least as
  new as the reader's check. A change racing with a read only makes the next reader ask again.
* ``turn()`` validates a whole run of requests at once: the dispatcher runs a turn's inline
  requests after ALL of them were read from their sockets, so a change acknowledged before any
  of them was sent is committed before the turn's check. The loop thread is marked validated for
  the turn (a thread-local), and lookups on it trust that check; any other thread (a worker's
  request is its own turn; the scheduler, the CLI) checks at every lookup.
* A check that fails marks nothing: each lookup then checks for itself and fails as a store
  read fails (StoreError, 503). A cache is never served unvalidated.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from ..domain.errors import StoreError
from .pgdb import PgDatabase

NO_GENERATION = -1  # the tag of an entry no check vouches for (this node's own writes)
_GENERATIONS = (b"fh_generations",
                b"SELECT (SELECT gen::text FROM ferrohsm_generation WHERE name = 'keys'), "
                b"(SELECT gen::text FROM ferrohsm_generation WHERE name = 'revoked_tokens')")


class Generations(NamedTuple):
    keys: int
    tokens: int


class Freshness:
    """The change generations of one database, for the key store and the revoked-token list of
    one process (one check serves both)."""

    def __init__(self, db: PgDatabase) -> None:
        self._db = db
        self._local = threading.local()
        self._lock = threading.Lock()
        self.latest: Generations | None = None  # the newest any thread read
        self.checks = 0  # round trips made: what the tests and the health page count

    def check(self) -> Generations:
        """Both generations as committed now: one round trip; StoreError without an answer."""
        rows = self._db.fetch(*_GENERATIONS, (), "cannot check the PostgreSQL state for changes")
        if not rows or rows[0][0] is None or rows[0][1] is None:
            raise StoreError("cannot check the PostgreSQL state for changes: the generation "
                             "rows are missing (ferrohsm_generation was edited)")
        gens = Generations(int(rows[0][0]), int(rows[0][1]))
        with self._lock:
            self.checks += 1
            self.latest = gens
        return gens

    def trusted(self) -> Generations | None:
        """The generations this thread's turn validated, or None outside a validated turn."""
        gens: Generations | None = getattr(self._local, "gens", None)
        return gens

    def current(self) -> Generations:
        """What a lookup on this thread may trust: its turn's check, else a check made now."""
        gens = self.trusted()
        return gens if gens is not None else self.check()

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Validate once for the requests this thread runs inside the block. Never raises for
        a failed check: the thread stays unvalidated, so each lookup checks (and fails) alone."""
        before = self.trusted()
        try:
            self._local.gens = self.check()
        except Exception:  # the lookups report it, one per request, audited
            self._local.gens = None
        try:
            yield
        finally:
            self._local.gens = before

    def stats(self) -> dict[str, object]:
        """For the health page, which anyone may read: how many checks, not what changed."""
        return {"freshness_checks": self.checks}
