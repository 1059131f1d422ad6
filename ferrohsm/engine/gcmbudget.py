"""How many AES-GCM encryptions one key version may still make, counted across processes,
nodes and restarts.

Random 96-bit nonces are safe for 2**32 encryptions per key (NIST SP 800-38D); past that, two
messages sharing a nonce become likely enough to matter, and one shared nonce gives away the
key's authentication subkey. A count kept in one process's memory is a lower bound only: every
other process, node and earlier run adds its own. So the count lives in the key record
(``KeyVersion.encryptions_reserved``, authenticated and audited like any change of the key), and
a process claims it in blocks: it RESERVES a block (the record's total grows by the block,
through the key's ordinary change protocol), then spends the block locally at the cost of one
lock and two integer operations per encryption. The sum of all blocks ever reserved bounds
every encryption any process made.

Why blocks are claimed ahead, off the request: the event loop that runs most encryptions must
never wait for a store write and two durable audit records (a thread waiting on the loop's own
fsync would deadlock it). A background thread renews a slot's block when half of it is left, so
a busy key's encryptions never meet an empty slot.

Why a process may run ahead of its reservations (``grace``): its first encryptions with a
version, before its first block is granted, and any made while a renewal is late. The next
reservation covers them retroactively (it claims what was used beyond the blocks, plus a new
block). Only a process that stops before that reservation lands leaves them uncounted: at
most ``grace`` encryptions per version per process run (``grace // 2`` when nothing stalls,
since the first block is asked for when half the grace is used). Near the limit there is no
grace: the last ``NO_GRACE_WITHIN`` encryptions of a version are made only against reserved
blocks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from ..domain.errors import Conflict, FerroError, Unavailable
from ..domain.model import GCM_LIMIT, Key

log = logging.getLogger("ferrohsm.keys")
GCM_WARN_AT = 1 << 30  # a quarter of the limit: time to rotate
GRACE = 1 << 16  # encryptions a process may make beyond its reservations (see above)
FIRST_BLOCK = 1 << 16  # a slot's first block; each renewal doubles it, up to MAX_BLOCK
MAX_BLOCK = 1 << 20  # at 10,000 encryptions a second, one reservation every 100 s
NO_GRACE_WITHIN = 1 << 24  # of the limit: reservations only (see above)
RETRY_AFTER = 1.0  # seconds before a failed reservation is tried again
WAIT = 5.0  # seconds a caller that may wait waits for a reservation before a 503

# (key id, version, encryptions wanted) -> (encryptions granted: fewer near the limit, the
# version's new total); raises Spent when the version has none left, any FerroError when it
# cannot reserve.
Reserver = Callable[[str, int, int], tuple[int, int]]


class Spent(Conflict):
    """A version's whole budget is reserved: rotate the key (409)."""


class Renewing(Unavailable):
    """A version's count is being renewed and this caller may not wait for it (503)."""

    retry_after = RETRY_AFTER


@dataclass
class Limits:
    """The bounds, apart so that tests can shrink them."""

    limit: int = GCM_LIMIT
    warn_at: int = GCM_WARN_AT
    grace: int = GRACE
    first_block: int = FIRST_BLOCK
    max_block: int = MAX_BLOCK
    no_grace_within: int = NO_GRACE_WITHIN


class _Slot:
    """One key version's count in this process. Guarded by the budget's lock."""

    __slots__ = ("block", "ceiling", "failed_at", "final", "granted", "key_id", "pending",
                 "renew_at", "used", "version")

    def __init__(self, key_id: str, version: int, ceiling: int, renew_at: int, block: int
                 ) -> None:
        self.key_id, self.version = key_id, version
        self.used = 0  # encryptions this process made with the version
        self.granted = 0  # encryptions its reservations cover
        self.ceiling = ceiling  # the most it may make before the next reservation lands
        self.renew_at = renew_at  # ``used`` at which a renewal is asked for
        self.block = block  # the next renewal's block
        self.pending = False  # a renewal is queued or running
        self.final = False  # the version's whole budget is reserved: no renewal can help
        self.failed_at = 0.0  # monotonic time of the last failed reservation


class GcmBudget:
    """The per-process half of the count (module docstring). Without a ``reserver`` (an engine
    used on its own, in tests and tools) it counts in this process only."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.reserver: Reserver | None = None
        # What the reserving thread holds around a renewal: the server's rekey pause, which
        # every request holds too (so a renewal a request runs itself already holds it).
        self.hold: Callable[[], AbstractContextManager[object]] = nullcontext
        self._slots: dict[tuple[str, int], _Slot] = {}
        self._lock = threading.Lock()  # held for a few operations, never across I/O
        self._renewed = threading.Condition(self._lock)
        self._queue: queue.SimpleQueue[_Slot | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._warned: set[tuple[str, int]] = set()

    def take(self, key: Key, version: int, *, wait: bool) -> None:
        """Count one encryption with ``key``'s ``version``, or refuse it: Conflict when the
        version's budget is spent (rotate), Unavailable when a reservation it needs has not
        landed. ``wait``: the caller may block for a reservation, and runs it itself (not the
        event loop: the reserving thread runs the loop's)."""
        slot = self._slots.get((key.id, version)) or self._slot(key, version)
        deadline = time.monotonic() + WAIT
        while True:
            with self._lock:
                if slot.used < slot.ceiling:
                    slot.used += 1
                    renew = slot.used >= slot.renew_at and self._may_start(slot)
                    break
                self._exhausted(slot, wait, deadline)
                here = wait and slot.used >= slot.ceiling and self._may_start(slot)
            if here:
                self.renew(slot)
        if renew:
            self.renew(slot) if wait else self._ask(slot)

    def _slot(self, key: Key, version: int) -> _Slot:
        """A new slot: grace to start with, unless the key record says the version is near its
        limit (then a reservation first)."""
        lim = self.limits
        reserved = key.version(version).encryptions_reserved
        if self.reserver is None:
            slot = _Slot(key.id, version, lim.limit, lim.limit, lim.first_block)
            slot.granted = slot.ceiling = lim.limit - reserved
            slot.final = True
        else:
            near = reserved >= lim.limit - lim.no_grace_within
            grace = 0 if near else lim.grace
            slot = _Slot(key.id, version, grace, grace // 2, lim.first_block)
            slot.final = reserved >= lim.limit  # spent before this process: 409 at once
        with self._lock:
            return self._slots.setdefault((key.id, version), slot)

    def _may_start(self, slot: _Slot) -> bool:
        """With the lock held: whether a renewal of ``slot`` starts now (then it is pending)."""
        if slot.pending or slot.final or time.monotonic() - slot.failed_at < RETRY_AFTER:
            return False
        slot.pending = True
        return True

    def _exhausted(self, slot: _Slot, wait: bool, deadline: float) -> None:
        """With the lock held, ``slot`` making no more encryptions now: refuse (Conflict: spent;
        Unavailable: its renewal is late or failed), or wait for a renewal running elsewhere,
        or return for the caller to run one."""
        if slot.final:
            raise Conflict(f"key {slot.key_id} version {slot.version} has made the "
                           f"{self.limits.limit} AES-GCM encryptions one key version may "
                           "(NIST SP 800-38D, random nonces): rotate the key to encrypt again")
        if not wait:
            if self._may_start(slot):
                self._queue_renewal(slot)
        elif slot.pending:
            left = deadline - time.monotonic()
            if left > 0 and self._renewed.wait(left):
                return  # look again
        elif time.monotonic() - slot.failed_at >= RETRY_AFTER:
            return  # the caller runs the renewal
        raise Renewing(f"key {slot.key_id} version {slot.version}: its count of AES-GCM "
                          "encryptions is being renewed in the key record; try again in a "
                          "moment")

    def _ask(self, slot: _Slot) -> None:
        with self._lock:
            self._queue_renewal(slot)

    def _queue_renewal(self, slot: _Slot) -> None:
        """With the lock held: hand ``slot`` to the reserving thread (started on first use)."""
        if self._closed:
            slot.pending = False
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ferrohsm-gcm-reserver",
                                            daemon=True)
            self._thread.start()
        self._queue.put(slot)

    def _run(self) -> None:
        while (slot := self._queue.get()) is not None:
            try:
                with self.hold():  # never beside a master-key rekey (custody/online.py)
                    self.renew(slot)
            except FerroError as exc:  # the hold refused: a rekey running, the server stopping
                self._failed(slot, exc.message)

    def renew(self, slot: _Slot) -> None:
        """Reserve what ``slot`` used beyond its blocks plus a new block; on the reserving
        thread (or a test's)."""
        with self._lock:
            want = max(slot.used - slot.granted, 0) + slot.block
        reserver = self.reserver
        try:
            if reserver is None:
                raise Unavailable("no key store to reserve AES-GCM encryptions in")
            got, total = reserver(slot.key_id, slot.version, want)
        except Spent:
            got, total = 0, self.limits.limit  # nothing left: what was granted is all there is
        except FerroError as exc:  # a key revoked meanwhile, a store or audit log down
            self._failed(slot, exc.message)
            return
        except Exception:  # the reserving thread must go on serving every other slot
            log.exception("reserving AES-GCM encryptions of key %s version %d failed",
                          slot.key_id, slot.version)
            self._failed(slot, "unexpected error")
            return
        self._warn(slot, total)
        lim = self.limits
        with self._lock:
            slot.granted += got
            slot.final = got < want
            near = total >= lim.limit - lim.no_grace_within
            slot.ceiling = slot.granted + (0 if slot.final or near else lim.grace)
            slot.renew_at = slot.granted - slot.block // 2
            slot.block = min(slot.block * 2, self.limits.max_block)
            slot.pending = False
            self._renewed.notify_all()

    def _failed(self, slot: _Slot, why: str) -> None:
        log.warning("could not reserve AES-GCM encryptions of key %s version %d: %s "
                    "(encryptions go on within the version's grace; tried again in %.0f s)",
                    slot.key_id, slot.version, why, RETRY_AFTER)
        with self._lock:
            slot.failed_at = time.monotonic()
            slot.pending = False
            self._renewed.notify_all()

    def _warn(self, slot: _Slot, total: int) -> None:
        """Once per version and process, when its reserved total passes ``warn_at``."""
        if total >= self.limits.warn_at and (slot.key_id, slot.version) not in self._warned:
            self._warned.add((slot.key_id, slot.version))
            log.warning("key %s version %d has %d AES-GCM encryptions reserved; rotate it well "
                        "before %d (NIST SP 800-38D, random nonces), or set rotation_days in "
                        "the policy of one of its tags", slot.key_id, slot.version, total,
                        self.limits.limit)

    def close(self, timeout: float = 15.0) -> None:
        """Stop the reserving thread after the renewal it runs (before the audit log closes;
        ``timeout`` covers a store busy for its own 5 s timeout, then a commit)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)
