"""Per-actor rate limits shared by every process and node of a cluster.

Each node keeps its own token buckets (auth/ratelimit.py), so the hot path never waits for a
database. Every ``interval`` (100 ms) a background thread publishes what each actor spent on this
node since the last exchange and reads every other node's cumulative spending (a ``UsageExchange``:
a SQLite table beside the keys, or a PostgreSQL table; store/sqlite_usage.py, store/pg_shared.py),
and debits this node's buckets with what the others spent since it last looked.

Tolerance: a node learns of another node's spending at most two intervals late (the other node's
publication, then our read), so over any period the cluster admits at most
``rate x period + burst`` plus what the nodes admitted in those two intervals before hearing of
each other: ``2 x rate x interval x nodes`` for an actor held at its limit (thread scheduling on
a busy host stretches an interval a little), and, for an actor whose buckets are full on every
node, each node's burst in those first intervals, ``(nodes - 1) x burst`` more, charged back as
debt once heard of. tests/integration/test_cluster.py measures it. When the exchange fails (the database is down) each node falls back to its own
buckets, which is at most ``nodes`` times the limit, and logs it once per failure streak.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Protocol

from ..domain.errors import FerroError
from .ratelimit import RateLimiter

log = logging.getLogger("ferrohsm.auth")
SYNC_INTERVAL = 0.1
MAX_SEEN = 200_000  # (actor, node) counters remembered; beyond that the oldest are forgotten

Spent = Mapping[str, tuple[float, str]]  # actor -> (tokens, role)
Totals = Mapping[tuple[str, str], tuple[float, str]]  # (actor, node) -> (cumulative, role)


class UsageExchange(Protocol):
    """The shared table of per-actor spending, one cumulative counter per (actor, node)."""

    def exchange(self, node: str, spent: Spent, now: float) -> Totals:
        """Add ``spent`` to this node's counters; return every OTHER node's counters.
        ``now`` is wall-clock seconds (rows idle for an hour are pruned). StoreError."""

    def close(self) -> None: ...


class ClusterLimits:
    """Keeps one node's actor buckets in step with the other nodes' spending."""

    def __init__(self, limiter: RateLimiter, usage: UsageExchange, *,
                 interval: float = SYNC_INTERVAL, node: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.limiter, self.usage, self.interval = limiter, usage, interval
        self.node = node or uuid.uuid4().hex
        self._clock, self._wall = clock, wall
        self._seen: dict[tuple[str, str], float] = {}
        self._baseline = False
        self._pending: dict[str, list[float | str]] = {}
        self._failing = False
        self.syncs = 0
        self.thread: threading.Thread | None = None  # set by start(); it closes the exchange
        limiter.share()

    def sync(self) -> None:
        """One exchange: publish our spending, debit what the others spent since last time."""
        for actor, (n, role) in self.limiter.drain_used().items():
            entry = self._pending.setdefault(actor, [0.0, role])
            entry[0] = float(entry[0]) + n
        spent = {a: (float(n), str(r)) for a, (n, r) in self._pending.items()}
        try:
            others = self.usage.exchange(self.node, spent, self._wall())
        except FerroError as exc:  # kept in _pending: published with the next exchange
            if not self._failing:
                log.warning("shared rate limits unavailable, limiting per node: %s", exc.message)
            self._failing = True
            return
        self._pending.clear()
        if self._failing:
            log.warning("shared rate limits available again")
        self._failing = False
        self.syncs += 1
        self._debit(others)

    def _debit(self, others: Totals) -> None:
        now = self._clock()
        for (actor, node), (total, role) in others.items():
            before = self._seen.get((actor, node))
            self._seen[(actor, node)] = total
            if before is None and not self._baseline:
                continue  # spent before this node started: already out of any bucket's window
            delta = total - (before or 0.0)
            if delta > 0:
                self.limiter.debit_actor(actor, role, delta, now)
        self._baseline = True
        while len(self._seen) > MAX_SEEN:
            self._seen.pop(next(iter(self._seen)))

    def start(self, stop: threading.Event) -> threading.Thread:
        """Exchange every ``interval`` until ``stop`` is set, in a daemon thread."""
        def loop() -> None:
            while not stop.wait(self.interval):
                try:
                    self.sync()
                except Exception:
                    log.exception("shared rate-limit exchange failed")
            self.usage.close()
        self.thread = threading.Thread(target=loop, name="ferrohsm-ratelimit-sync", daemon=True)
        self.thread.start()
        return self.thread
