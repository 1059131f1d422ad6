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
  of them was sent is committed before the turn's check. The check is made by the turn's first
  lookup (a turn of health probes makes none) and kept for the rest of the turn in a
  thread-local; any other thread (a worker's request is its own turn; the scheduler, the CLI)
  checks at every lookup.
* A check that fails is kept by no one: the lookup that made it fails as a store read fails
  (StoreError, 503), and the next lookup checks again. A cache is never served unvalidated.
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
        """The generations this thread's turn validated, or None (no turn, or not checked yet)."""
        gens: Generations | None = getattr(self._local, "gens", None)
        return gens

    def current(self) -> Generations:
        """What a lookup on this thread may trust: its turn's check, else a check made now
        (kept for the rest of the turn when there is one)."""
        gens = self.trusted()
        if gens is None:
            gens = self.check()  # StoreError: nothing kept, the next lookup asks again
            if getattr(self._local, "in_turn", False):
                self._local.gens = gens
        return gens

    @contextmanager
    def turn(self) -> Iterator[None]:
        """One check for every lookup this thread makes inside the block, made by the first of
        them: enter only once every request the block runs has been read."""
        saved = getattr(self._local, "in_turn", False), self.trusted()
        self._local.in_turn, self._local.gens = True, None
        try:
            yield
        finally:
            self._local.in_turn, self._local.gens = saved

    def stats(self) -> dict[str, object]:
        """For the health page, which anyone may read: how many checks, not what changed."""
        return {"freshness_checks": self.checks}
