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

The counter is not authenticated (the rows it vouches for are), so a hand in the database could
stop it or put it back, and a node would keep serving a key revoked since (an outside tester:
one UPDATE of ferrohsm_generation). Three things bound that:

* A writer checks that its change moved the counter (``require_bump``, in the writer's
  transaction): a counter frozen by a trigger fails the change, which is then never
  acknowledged, instead of acknowledging what the other nodes will not see.
* The numbers caches are tagged with only ever grow here: a counter lower than one read before
  is taken as a change (every entry re-read), and logged.
* Tags carry the REVALIDATE_SECONDS period they were read in: no entry serves longer than that
  without its row being asked for again (one small query a key and period when it did not
  change: rows are compared by version, not sent again). A counter put back to exactly what a
  node last saw is then outlived within seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from ..domain.errors import IntegrityError, StoreError
from .pgdb import PgDatabase

log = logging.getLogger("ferrohsm.store")
REVALIDATE_SECONDS = 2.0  # at most this long does a cached row serve without being asked for
_PERIODS = 1 << 32  # tags: (monotonic generation) * _PERIODS + period number
GENERATION_OF = "SELECT gen FROM ferrohsm_generation WHERE name = %s"

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
        self._checking = threading.Lock()  # checks one at a time: read in the order applied
        self.latest: Generations | None = None  # the newest any thread read
        self.checks = 0  # round trips made: what the tests and the health page count
        self._raw: tuple[int, int] | None = None  # the counters as last read
        self._shift = [0, 0]  # added to them, so that what caches see never goes back

    def check(self) -> Generations:
        """Both generations as committed now: one round trip; StoreError without an answer."""
        with self._checking:
            rows = self._db.fetch(*_GENERATIONS, (),
                                  "cannot check the PostgreSQL state for changes")
            if not rows or rows[0][0] is None or rows[0][1] is None:
                raise StoreError("cannot check the PostgreSQL state for changes: the "
                                 "generation rows are missing (ferrohsm_generation was edited)")
            gens = self._tags((int(rows[0][0]), int(rows[0][1])), time.monotonic())
            with self._lock:
                self.checks += 1
                self.latest = gens
        return gens

    def _tags(self, raw: tuple[int, int], now: float) -> Generations:
        """What caches tag entries with: the counters made never to go back, and the period."""
        previous, self._raw = self._raw, raw
        for i, (name, value) in enumerate(zip(Generations._fields, raw, strict=True)):
            if previous is not None and value < previous[i]:
                self._shift[i] += previous[i] - value + 1
                log.error("the PostgreSQL change generation of %s went back from %d to %d: "
                          "ferrohsm_generation was edited by hand; every cached entry is read "
                          "again", name, previous[i], value)
        period = int(now / REVALIDATE_SECONDS)
        return Generations(*((value + shift) * _PERIODS + period
                             for value, shift in zip(raw, self._shift, strict=True)))

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


def generation_in(conn: Any, name: str) -> int:
    """The counter ``name`` as the transaction on ``conn`` sees it."""
    row = conn.execute(GENERATION_OF, (name,)).fetchone()
    if row is None:
        raise StoreError("the PostgreSQL change generation rows are missing "
                         "(ferrohsm_generation was edited)")
    return int(row[0])


def require_bump(conn: Any, name: str, before: int) -> None:
    """Refuse (the transaction is rolled back) a change that did not move its counter past
    ``before``, read earlier in the same transaction: the other nodes would never learn of it."""
    after = generation_in(conn, name)
    if after <= before:
        raise IntegrityError(f"the PostgreSQL change generation of {name} did not move with "
                             "this change (ferrohsm_generation, or its trigger, was altered): "
                             "refused, as other nodes would not see it; restore the trigger "
                             "(schema migration 2) and retry")
