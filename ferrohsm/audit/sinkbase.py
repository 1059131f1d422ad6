"""The AuditSink port and the machinery every concrete sink shares.

``AuditSink.append`` returns only once the record is durable and raises ``AuditUnavailable``
otherwise: the service refuses the operation rather than perform it unaudited (fail closed).

``ChainedSink`` owns the chain state and the concurrency story, so a backend only has to say how
to store a batch of lines durably (``_persist``) and undo a partial one:

* Writers enter through a bounded-leader ``GroupCommit``; the leader seals the whole group (seq,
  prev_hash, ts, id assigned in arrival order under ``_io_lock``) and hands it to ``_persist``.
  Sealing in the leader, not in each writer, means a failed group leaves no hole in ``seq``: the
  tentative head (``_next_*``) is simply dropped and the committed head stays where it was.
* Deferral, for an event-loop server that answers many requests per turn: inside a thread's
  deferral scope (``begin_deferral``/``end_deferral``), ``append(event, defer=True)`` only
  encodes the event and returns None; the scope's owner then makes all of them durable with ONE
  ``commit_deferred`` (one group, one write, one fsync) before it sends any of the answers. A
  caller outside a scope, or one appending without ``defer``, gets the durable append as always,
  so only call sites that change no state may defer (a failed commit can then only turn their
  answers into 503s; there is nothing to compensate).
* Split commits, so an event loop need not sit idle in fsync: ``write_deferred`` seals and
  writes a scope's records at once and returns a ticket; ``sync(ticket)`` (on another thread)
  makes them durable. Between the two the records are written but not acknowledged: ``head()``,
  ``read()`` and checkpoints only ever cover durable records. A backend whose storage cannot
  separate the write from the flush (SQLite's COMMIT) does both in ``write_deferred``.
* A backend that cannot prove it undid a partial write sets ``_failed``; from then on every append
  is refused and ``healthy()`` is False until a restart re-reads what is really on disk.
* Signed checkpoints (``anchor.Anchor``) are taken every ``anchor_every`` records, on demand and at
  close, and checked at open so a log shorter than its last checkpoint refuses to start.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

from ..domain.errors import AuditUnavailable, ConfigError
from ..domain.ids import uuid4_str
from .anchor import Anchor
from .chain import GENESIS_HASH, AuditEvent, DetailValue, PreparedEvent, prepare, seal_prepared
from .groupcommit import GroupCommit

log = logging.getLogger("ferrohsm.audit")

SHORTER_THAN_CHECKPOINT = ("audit log is shorter than its last signed checkpoint: "
                           "truncated or rolled back")
SYSTEM_ACTOR = "system"


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_uuid() -> str:
    return uuid4_str()


class AuditSink(ABC):
    """Append-only, hash-chained, HMAC-authenticated audit log. Safe to call from many threads."""

    @abstractmethod
    def append(self, event: AuditEvent, *, defer: bool = False) -> dict[str, Any] | None:
        """Seal and store ``event``; return the sealed record once durable, else raise
        AuditUnavailable. With ``defer`` inside this thread's deferral scope: queue it in the
        scope and return None (``commit_deferred`` makes it durable)."""

    def begin_deferral(self) -> None:
        """Open this thread's deferral scope (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} cannot defer records")

    def end_deferral(self) -> list[PreparedEvent]:
        """Close this thread's scope; the records deferred in it, in order, for
        ``commit_deferred``."""
        raise NotImplementedError(f"{type(self).__name__} cannot defer records")

    def deferred_count(self) -> int:
        """How many records this thread's open scope holds (0 without a scope)."""
        return 0

    def commit_deferred(self, events: list[PreparedEvent]) -> list[dict[str, Any]]:
        """Seal and store ``events`` as one group, durable on return, else AuditUnavailable
        (then none of them was stored)."""
        raise NotImplementedError(f"{type(self).__name__} cannot defer records")

    def write_deferred(self, events: list[PreparedEvent]) -> int:
        """Seal and write ``events`` as one group now (AuditUnavailable if that fails: then none
        was written); the ticket to pass to ``sync``. Not durable, so not acknowledgeable, yet."""
        records = self.commit_deferred(events)
        return int(records[-1]["seq"]) if records else self.head()[0]

    def sync(self, ticket: int) -> None:
        """Return once every record through ``ticket`` is durable, else AuditUnavailable."""
        if self.head()[0] < ticket:
            raise AuditUnavailable("audit records were lost before they became durable")

    @abstractmethod
    def read(self, after_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Up to ``limit`` committed records with seq > ``after_seq``, ascending."""

    @abstractmethod
    def head(self) -> tuple[int, str]:
        """(last committed seq, its hash); (0, GENESIS_HASH) for an empty log."""

    @abstractmethod
    def healthy(self) -> bool:
        """Whether appends are being accepted: False after an unrecoverable failure (until a
        restart) or after close. A failure the sink cleanly undid (a rolled-back transaction, a
        truncated short write) fails only its own group: the next append is attempted, so a
        caller that checks ``healthy()`` before acting is not locked out by a passing error.
        ``describe()["last_write_ok"]`` tells whether the latest group made it."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Status for /healthz: backend, head, counters. Never paths to secrets, never keys."""

    @abstractmethod
    def fail_closed(self, reason: str) -> None:
        """Refuse every further record until a restart (fail closed), as after a write the sink
        could not undo. For a caller whose change is applied, or may be, but whose settling
        record could not be written: start-up reconciliation settles it from the log and the
        store (integrity/reconcile.py)."""

    @abstractmethod
    def make_checkpoint(self, now: datetime | None = None) -> dict[str, Any]:
        """Sign the current head now and return the checkpoint (see anchor.py)."""

    def prune(self, now: datetime) -> dict[str, Any] | None:
        """Apply the retention window; returns the audit.checkpoint record, or None. Default: no
        retention (records are kept forever)."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Flush, take a final checkpoint, release files. Later appends raise AuditUnavailable."""


class ChainedSink(AuditSink):
    """Shared chain state, group commit, fail-closed bookkeeping and checkpointing."""

    backend: ClassVar[str] = "abstract"

    def __init__(self, hmac_key: bytes, *, anchor: Anchor, durable: bool = True,
                 anchor_every: int = 1000, clock: Callable[[], datetime] | None = None,
                 new_id: Callable[[], str] | None = None, max_group: int = 256) -> None:
        if not isinstance(hmac_key, bytes) or len(hmac_key) < 32:
            raise ConfigError("audit HMAC key must be at least 32 bytes")
        if anchor_every < 0:
            raise ConfigError("audit anchor_every must be >= 0 (0: only on demand and at close)")
        self._key = hmac_key
        self.durable = durable
        self.anchor = anchor
        self._anchor_every = anchor_every
        self._clock = clock or utcnow
        self._new_id = new_id or new_uuid
        self._io_lock = threading.RLock()
        # Each writer submits a list: one event for append(), a whole scope for commit_deferred().
        self._group: GroupCommit[list[PreparedEvent], list[dict[str, Any]]] = GroupCommit(
            self._flush_lists, max_group)
        self._deferral = threading.local()
        self._records_written = 0
        self._syncs = 0  # flushes by sync(), beside the group commits of append()
        self._committed: tuple[int, str] = (0, GENESIS_HASH)  # replaced whole: lock-free reads
        self._written: tuple[int, str] = (0, GENESIS_HASH)  # ahead of _committed between a
        self._sync_lock = threading.Lock()                  # write_deferred and its sync()
        self._next_seq, self._next_hash = 0, GENESIS_HASH
        self._log_id = ""
        self._failed: str | None = None
        self._last_ok = True
        self._closed = False
        self._failures = 0
        self._anchor_failures = 0
        self._last_checkpoint_seq = 0

    # ---- the AuditSink interface ------------------------------------------------------------

    def append(self, event: AuditEvent, *, defer: bool = False) -> dict[str, Any] | None:
        if not isinstance(event, AuditEvent):
            raise TypeError("append() takes an AuditEvent")
        prepared = prepare(event)  # encoded here, in the writer's thread
        if defer:
            scope: list[PreparedEvent] | None = getattr(self._deferral, "scope", None)
            if scope is not None:
                if self._failed is not None or self._closed:
                    self._check_usable()  # refuse now: the answer must not be computed
                scope.append(prepared)
                return None
        return self._group.submit([prepared])[0]

    def begin_deferral(self) -> None:
        self._deferral.scope = []

    def end_deferral(self) -> list[PreparedEvent]:
        scope: list[PreparedEvent] | None = getattr(self._deferral, "scope", None)
        self._deferral.scope = None
        return scope or []

    def deferred_count(self) -> int:
        scope: list[PreparedEvent] | None = getattr(self._deferral, "scope", None)
        return len(scope) if scope else 0

    def commit_deferred(self, events: list[PreparedEvent]) -> list[dict[str, Any]]:
        if not events:
            return []
        return self._group.submit(events)

    def head(self) -> tuple[int, str]:
        return self._committed

    def healthy(self) -> bool:
        return self._failed is None and not self._closed

    def fail_closed(self, reason: str) -> None:
        with self._io_lock:
            if self._failed is None:
                self._failed = reason
                self._failures += 1
        log.critical("audit: refusing every record until restart: %s", reason)

    def describe(self) -> dict[str, Any]:
        seq, digest = self._committed
        return {
            "backend": self.backend, "healthy": self.healthy(), "durable": self.durable,
            "last_write_ok": self._last_ok,
            "log_id": self._log_id, "head_seq": seq, "head_hash": digest,
            "failures": self._failures, "problem": self._failed,
            "records_written": self._records_written,
            "group_commits": self._group.groups + self._syncs,
            "last_checkpoint_seq": self._last_checkpoint_seq,
            "checkpoint_failures": self._anchor_failures,
        }

    def make_checkpoint(self, now: datetime | None = None) -> dict[str, Any]:
        with self._io_lock:
            self._check_usable()
            seq, digest = self._committed
            try:
                checkpoint = self.anchor.sign(log_id=self._log_id, seq=seq, head_hash=digest,
                                              ts=now or self._clock())
            except OSError as exc:
                self._anchor_failures += 1
                raise AuditUnavailable(
                    f"could not write audit checkpoint: {exc.strerror}") from None
            self._last_checkpoint_seq = seq
            return checkpoint

    def close(self) -> None:
        if not self._closed and self._failed is None and self._written[0] > self._committed[0]:
            try:  # records written for answers that never left: make them durable anyway
                self.sync(self._written[0])
            except AuditUnavailable as exc:
                log.warning("audit: written records not flushed at close: %s", exc.message)
        with self._io_lock:
            if self._closed:
                return
            try:
                if self._failed is None and self._committed[0] > self._last_checkpoint_seq:
                    self.make_checkpoint()
            except AuditUnavailable as exc:
                log.warning("audit: no checkpoint at close: %s", exc.message)
            finally:
                self._closed = True
                self._close_storage()

    # ---- backend hooks ------------------------------------------------------------------------

    @abstractmethod
    def _persist(self, events: list[PreparedEvent], sync: bool = True) -> list[dict[str, Any]]:
        """Seal ``events`` with ``_seal`` and store them, all or nothing, durably (with every
        record written before them) unless ``sync`` is False and the backend splits syncs;
        raise on failure (setting ``_failed`` when a partial write could not be undone)."""

    @abstractmethod
    def _hash_at(self, seq: int) -> str | None:
        """Hash of the authentic record ``seq``, None if it is no longer kept (pruned)."""

    @abstractmethod
    def _close_storage(self) -> None:
        """Release files and connections."""

    # ---- helpers for backends -----------------------------------------------------------------

    def _seal(self, event: PreparedEvent | AuditEvent) -> tuple[dict[str, Any], bytes]:
        """Seal ``event`` as the next record of the tentative head and advance it."""
        if isinstance(event, AuditEvent):
            event = prepare(event)
        record, line = seal_prepared(
            event, seq=self._next_seq + 1, prev_hash=self._next_hash, ts=self._clock(),
            record_id=self._new_id(), hmac_key=self._key)
        self._next_seq, self._next_hash = record["seq"], record["hash"]
        return record, line

    def _system_event(self, action: str, message: str, **details: DetailValue) -> AuditEvent:
        """A record the sink writes about itself (genesis, segment start, recovery, pruning)."""
        return AuditEvent(actor=SYSTEM_ACTOR, role=SYSTEM_ACTOR, action=action, outcome="success",
                          message=message, details={"log_id": self._log_id, **details})

    def _check_usable(self) -> None:
        if self._closed:
            raise AuditUnavailable("audit log is closed")
        if self._failed is not None:
            raise AuditUnavailable(f"audit log unavailable until restart: {self._failed}")

    def _flush_lists(self, groups: list[list[PreparedEvent]]) -> list[list[dict[str, Any]]]:
        """GroupCommit's flush: every writer's list in one ``_flush``, results split back."""
        if len(groups) == 1:
            return [self._flush(groups[0])]
        records = self._flush([event for events in groups for event in events])
        out, start = [], 0
        for events in groups:
            out.append(records[start:start + len(events)])
            start += len(events)
        return out

    def _set_head(self, head: tuple[int, str]) -> None:
        """Everything through ``head`` is durable (and written)."""
        self._committed = self._written = head

    def _flush(self, events: list[PreparedEvent]) -> list[dict[str, Any]]:
        """Runs in the group-commit leader's thread, one group at a time."""
        with self._io_lock:
            records = self._write_group(events, sync=True)
            self._set_head(self._written)  # the flush covered earlier unsynced writes too
            self._maybe_checkpoint()
            return records

    def _write_group(self, events: list[PreparedEvent], sync: bool) -> list[dict[str, Any]]:
        """Seal after the written head and store (durably when ``sync``); caller holds _io_lock."""
        self._check_usable()
        self._next_seq, self._next_hash = self._written
        try:
            records = self._persist(events, sync)
        except Exception as exc:
            self._failures += 1
            self._last_ok = False
            if isinstance(exc, AuditUnavailable):
                raise
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            log.error("audit: %d record(s) could not be made durable: %s", len(events), reason)
            raise AuditUnavailable(
                f"audit record could not be made durable: {reason}") from None
        self._written = (self._next_seq, self._next_hash)
        self._records_written += len(events)
        self._last_ok = True
        return records

    def write_deferred(self, events: list[PreparedEvent]) -> int:
        if not self._splits_sync or not self.durable:
            return super().write_deferred(events)
        if not events:
            return self._written[0]
        with self._io_lock:
            self._write_group(events, sync=False)
            return self._written[0]

    def sync(self, ticket: int) -> None:
        if self._committed[0] >= ticket:
            return
        with self._sync_lock:  # one flush at a time; writers keep writing meanwhile
            if self._committed[0] >= ticket:
                return  # a flush that started after our write covered it
            with self._io_lock:
                self._check_usable()
                target = self._written
                try:
                    token = self._sync_token()
                except OSError as exc:  # e.g. EMFILE: nothing was flushed, nothing is lost
                    raise AuditUnavailable(
                        f"audit record could not be made durable: {exc.strerror}") from None
            try:
                self._sync_storage(token)
            except Exception as exc:
                with self._io_lock:
                    self._failures += 1
                    self._last_ok = False
                    self._sync_failed(token)
                reason = getattr(exc, "strerror", None) or type(exc).__name__
                log.error("audit: flushing written records failed: %s", reason)
                raise AuditUnavailable(
                    f"audit record could not be made durable: {reason}") from None
            with self._io_lock:
                # A writer may have failed meanwhile and cut written records off: only a sink
                # still usable, whose storage is still the one we flushed, acknowledges.
                self._check_usable()
                self._after_sync()
                self._syncs += 1
                if target[0] > self._committed[0]:
                    self._committed = target
                    self._maybe_checkpoint()
        if self._committed[0] < ticket:
            raise AuditUnavailable("audit records were lost before they became durable")

    # Backends that can write now and flush later set _splits_sync and implement these three.
    _splits_sync: ClassVar[bool] = False

    def _sync_token(self) -> Any:
        """What ``_sync_storage`` must flush to cover everything written so far (under
        _io_lock)."""
        raise NotImplementedError

    def _sync_storage(self, token: Any) -> None:
        """Flush (no lock held: writes go on meanwhile)."""
        raise NotImplementedError

    def _after_sync(self) -> None:
        """Check, under _io_lock after a flush, that it flushed the live storage (raise
        AuditUnavailable otherwise). Default: nothing to check."""

    def _sync_failed(self, token: Any) -> None:
        """A flush failed: undo what was written but not durable, set ``_failed`` (under
        _io_lock)."""
        raise NotImplementedError

    def _maybe_checkpoint(self) -> None:
        every = self._anchor_every
        seq = self._committed[0]
        if every and seq // every > self._last_checkpoint_seq // every:
            try:
                self.make_checkpoint()
            except AuditUnavailable as exc:  # the records are durable; only the anchor lags
                log.warning("audit: %s", exc.message)

    def _check_against_checkpoint(self) -> None:
        """Refuse to open a log that is shorter than, or diverges from, its last checkpoint."""
        checkpoint = self.anchor.last()
        if checkpoint is None:
            return
        if checkpoint.get("corrupt") or not self.anchor.verify_own(checkpoint):
            raise AuditUnavailable(f"the last audit checkpoint in {self.anchor.path} is corrupt or "
                                   "its signature does not verify")
        seq, digest = checkpoint.get("seq"), checkpoint.get("head_hash")
        head_seq, head_hash = self._committed
        if not isinstance(seq, int) or seq > head_seq:
            raise AuditUnavailable(f"{SHORTER_THAN_CHECKPOINT} (log ends at seq {head_seq}, "
                                   f"checkpoint of {checkpoint.get('ts')} covers seq {seq})")
        if checkpoint.get("log_id") != self._log_id:
            raise AuditUnavailable(f"the last audit checkpoint in {self.anchor.path} belongs to "
                                   f"another audit log ({checkpoint.get('log_id')!r:.60})")
        found = head_hash if seq == head_seq else self._hash_at(seq)
        if found is None:
            log.warning("audit: checkpoint seq %d is older than the retained log", seq)
        elif found != digest:
            raise AuditUnavailable(f"{SHORTER_THAN_CHECKPOINT} (record seq {seq} differs from "
                                   "the signed checkpoint)")
        self._last_checkpoint_seq = seq
