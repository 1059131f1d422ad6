"""The AuditSink port and the machinery every concrete sink shares.

``AuditSink.append`` returns only once the record is durable and raises ``AuditUnavailable``
otherwise: the service refuses the operation rather than perform it unaudited (fail closed).

``ChainedSink`` owns the chain state and the concurrency story, so a backend only has to say how
to store a batch of lines durably (``_persist``) and undo a partial one:

* Writers enter through a bounded-leader ``GroupCommit``; the leader seals the whole group (seq,
  prev_hash, ts, id assigned in arrival order under ``_io_lock``) and hands it to ``_persist``.
  Sealing in the leader, not in each writer, means a failed group leaves no hole in ``seq``: the
  tentative head (``_next_*``) is simply dropped and the committed head stays where it was.
* Tickets, for an event-loop server that answers many requests per turn and must not sit in
  fsync: ``append(event, durable=False)`` only encodes the event, queues it and returns a
  ``Ticket``, a value the caller keeps (the server keeps it with the request it belongs to).
  ``write_queued()`` seals and writes everything queued as ONE group, in the calling thread
  (the loop calls it once per turn: CPU work it would wait for anyway); ``wait(ticket)`` (on
  another thread) makes it durable with ONE flush that covers every record written before it;
  ``is_durable(ticket)`` asks without blocking. A ticket fails (``wait`` and ``is_durable`` raise
  AuditUnavailable) when its write or its flush failed, or the sink failed or closed before it
  was durable. Only records that change no state may be appended this way: a failed ticket can
  then only turn an answer into a 503; there is nothing to compensate.
* Between the write and the flush the records are written but not acknowledged: ``head()``,
  ``read()`` and checkpoints only ever cover durable records. A backend whose storage cannot
  separate the write from the flush (SQLite's COMMIT) commits the group in ``write_queued``, so
  its tickets are durable when it returns. A ticket gets its seq only once its record is
  written, and written records are lost only together with the sink's health (``_failed``:
  nothing is committed after that), so a ticket is durable exactly when it has a seq and that
  seq is committed; a seq a failed group gave back is never mistaken for its ticket's.
* A backend that cannot prove it undid a partial write sets ``_failed``; from then on every append
  is refused and ``healthy()`` is False until a restart re-reads what is really on disk.
* One log, many writers (several processes on a host, several nodes on one database): the
  storage orders the batches, so there is one linear chain and the offline verifier is
  unchanged. Each backend's ``_persist`` takes its storage's lock for the batch (``flock`` on
  the file sink's lock file, SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's transaction-scoped
  advisory lock), reads the head as stored and, when another writer moved it, continues after
  it (``_follow``: the stored head is authenticated first; a head behind what this process
  wrote means the storage was cut or rolled back, and the sink fails closed), seals its
  records, makes them durable and releases. When nobody else wrote, the check costs one or two
  system calls (file) or one indexed query inside the transaction it needs anyway (SQL).
  ``catch_up()`` does the same without writing (readers; start-up checks against checkpoints).
* Signed checkpoints (``anchor.Anchor``) are taken every ``anchor_every`` records (by the
  group-commit leader), every ``checkpoint_interval`` seconds while records flow (checkpointer.py,
  off the request path), at open when the head moved, on demand (``anchor_now``) and at close;
  a log shorter than its last checkpoint refuses to start. ``attach_witness`` also copies them
  outside the data directory (witness.py). They have their own lock: never held by a writer.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, overload

from ..domain.errors import AuditUnavailable, ConfigError
from ..domain.ids import uuid4_str
from ..domain.strictjson import loads
from .anchor import Anchor
from .chain import GENESIS_HASH, AuditEvent, DetailValue, PreparedEvent, prepare, seal_prepared
from .checkpointer import Checkpointer
from .groupcommit import GroupCommit
from .port import AuditSink as AuditSink
from .port import Ticket as Ticket
from .settling import Settle, Settling
from .splitflush import PendingFlush as PendingFlush
from .splitflush import SplitFlush
from .witness import Witness

log = logging.getLogger("ferrohsm.audit")

# The end of the line that logs a sink failing closed: freeing the disk (or whatever caused it)
# is not enough, the running server never writes to this log again (README, full disk).
RESTART_NEEDED = ("; the audit log is failed closed: every audited operation is refused (503) "
                  "and a restart of the server is required to resume writes, once the cause "
                  "(e.g. a full disk) is fixed")

SHORTER_THAN_CHECKPOINT = ("audit log is shorter than its last signed checkpoint: "
                           "truncated or rolled back")
SYSTEM_ACTOR = "system"
PROBE_ACTION = "audit.writable"  # the record that says the log takes records again (_probe)
PROBE_EVERY = 5.0  # seconds between probes while the last write failed
SLOW_COMMIT = 0.05  # a group commit slower than this moves the next ones off the event loop


def stored_record(text: str | bytes, where: str) -> dict[str, Any]:
    """A record read back from the sink's storage; one that does not parse (not JSON, nested
    too deeply) is a failed record, never an unexpected error."""
    try:
        value = loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise AuditUnavailable(f"an audit record in {where} fails its integrity check (not a "
                               "JSON object); run `ferrohsm audit verify`")
    return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_uuid() -> str:
    return uuid4_str()


# What a caller is told while the sink refuses records: the cause (a key id, a database's
# address, a file) is for the operator, in the server log and /healthz, not for every caller.
REFUSING = ("the audit log refuses every record until its failure is cleared (the server log "
            "names it); the request was refused")

class ChainedSink(Settling, SplitFlush, AuditSink):
    """Shared chain state, group commit, fail-closed bookkeeping and checkpointing."""

    backend: ClassVar[str] = "abstract"
    # Told (seconds, records) after each durable flush, for the fsync latency and batch size
    # histograms (telemetry/metrics.py); it runs on the flushing thread and must not raise.
    on_sync: Callable[[float, int], None] | None = None
    # Entered around each durable append (a record its caller waits on: a worker's request,
    # a state change): the traced request's audit.flush span (telemetry/tracing.py).
    observe_durable: Callable[[], AbstractContextManager[Any]] | None = None

    def __init__(self, hmac_key: bytes, *, anchor: Anchor, durable: bool = True,
                 anchor_every: int = 1000, clock: Callable[[], datetime] | None = None,
                 new_id: Callable[[], str] | None = None, max_group: int = 256,
                 checkpoint_interval: float = 0.0) -> None:
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
        # Each writer submits a list: one event for append(), a whole queue for write_queued().
        self._group: GroupCommit[list[PreparedEvent], list[dict[str, Any]]] = GroupCommit(
            self._flush_lists, max_group)
        self._queue: list[tuple[PreparedEvent, Ticket]] = []  # append(durable=False), in order
        self._queue_lock = threading.Lock()
        self._writing = threading.Lock()  # one write_queued() at a time: seqs follow the queue
        self._records_written = 0
        self._syncs = 0  # flushes of written records, beside the group commits of append()
        self._committed: tuple[int, str] = (0, GENESIS_HASH)  # replaced whole: lock-free reads
        self._written: tuple[int, str] = (0, GENESIS_HASH)  # ahead of _committed between a
        self._sync_lock = threading.RLock()                 # write_queued() and its flush
        self._next_seq, self._next_hash = 0, GENESIS_HASH
        self._log_id = ""
        self._failed: str | None = None
        self._commits_slowly = False  # the last group's commit was slow or failed (_flush)
        # settling records that could not be written (fail_until_recorded): the failure they
        # caused ends once they are, unless the sink failed otherwise meanwhile
        self._unsettled: list[Settle] = []  # settling.py
        self._unsettled_reason: str | None = None
        self._settler: threading.Thread | None = None
        self._settling = False  # settling.py: its records are being written (not healthy yet)
        self._reported: set[str] = set()  # failures callers reported (see _refusal)
        self._last_ok = True
        self._problem: str | None = None  # the last failed write or flush, until a good one
        self._closed = False
        self._failures = 0
        self._failures_at_ok = 0  # _failures at the last good write (the probe's count)
        self._probe_after = 0.0  # monotonic time before which no probe is written
        self._anchor_failures = 0
        self._last_checkpoint_seq = 0
        self._anchor_lock = threading.Lock()
        try:
            self._checkpointer = Checkpointer(self._interval_checkpoint, checkpoint_interval,
                                              probe=self._probe)
        except ValueError as exc:
            raise ConfigError(f"audit {exc}") from None

    # ---- the AuditSink interface ------------------------------------------------------------

    @overload
    def append(self, event: AuditEvent, *, durable: Literal[True] = ...) -> dict[str, Any]: ...
    @overload
    def append(self, event: AuditEvent, *, durable: Literal[False]) -> Ticket: ...
    @overload
    def append(self, event: AuditEvent, *, durable: bool) -> dict[str, Any] | Ticket: ...
    def append(self, event: AuditEvent, *, durable: bool = True) -> dict[str, Any] | Ticket:
        if not isinstance(event, AuditEvent):
            raise TypeError("append() takes an AuditEvent")
        prepared = prepare(event)  # encoded here, in the writer's thread
        if durable:
            observe = self.observe_durable
            if observe is None:
                return self._group.submit([prepared])[0]
            with observe():
                return self._group.submit([prepared])[0]
        if self._failed is not None or self._closed:
            self._check_usable()  # refuse now: the answer must not be computed
        ticket = Ticket()
        with self._queue_lock:
            self._queue.append((prepared, ticket))
        return ticket

    def append_group(self, events: list[AuditEvent]) -> list[dict[str, Any]]:
        """Many records as ONE durable group (one write, one flush), in order: for start-up
        work that records thousands of changes at once; the sealed records once durable."""
        if not events:
            return []
        return self._group.submit([prepare(event) for event in events])

    def write_queued(self) -> None:
        with self._writing:
            with self._queue_lock:
                queued, self._queue = self._queue, []
            if not queued:
                return
            events = [prepared for prepared, _ in queued]
            try:
                if self._splits_sync and self.durable:
                    with self._io_lock:
                        records = self._write_group(events, sync=False)
                else:  # nothing to split: one group commit, durable on return
                    records = self._group.submit(events)
            except AuditUnavailable as exc:
                for _, ticket in queued:
                    ticket.error = exc.message
                return
            for (_, ticket), record in zip(queued, records, strict=True):
                ticket.seq = record["seq"]

    def is_durable(self, ticket: Ticket) -> bool:
        if ticket.error is not None:
            raise AuditUnavailable(ticket.error)
        if 0 < ticket.seq <= self._committed[0]:
            return True
        if self._failed is None and not self._closed:
            return False
        if 0 < ticket.seq <= self._committed[0]:
            return True  # committed just before the failure (or the close): final now
        ticket.error = ("audit log is closed" if self._failed is None
                        else self._refusal())
        raise AuditUnavailable(ticket.error)

    def wait(self, ticket: Ticket) -> None:
        if ticket.seq == 0 and ticket.error is None:
            self.write_queued()  # still queued: nobody wrote it yet
        if self.is_durable(ticket):
            return
        self._flush_written(ticket.seq)
        if not self.is_durable(ticket):
            raise AuditUnavailable("audit records were lost before they became durable")

    def head(self) -> tuple[int, str]:
        return self._committed

    def healthy(self) -> bool:
        return self._failed is None and not self._closed and not self._settling

    def degraded(self) -> str | None:
        if self._closed:
            return "the audit log is closed"
        if self._failed is not None:
            if self._failed == self._unsettled_reason:
                return (f"the audit log refuses records until a change's settling record is "
                        f"written (retried every second): {self._failed}")
            return f"the audit log is unavailable until restart: {self._failed}"
        return self._problem

    def fail_closed(self, reason: str) -> None:
        with self._io_lock:
            if self._failed is None:
                self._failed = reason
                self._reported.add(reason)
                self._failures += 1
            self._unsettled_reason = None  # only a restart ends it: no settling record does
        log.critical("audit: refusing every record until restart: %s%s", reason, RESTART_NEEDED)

    def _refusal(self) -> str:
        """What a caller is told while the sink refuses records: the sink's own failure, or,
        for one a caller reported (fail_closed, fail_until_recorded: it names keys, intents
        and what the database said), REFUSING."""
        failed = self._failed
        if failed is not None and failed in self._reported:
            return REFUSING
        return f"audit log unavailable until restart: {failed}"

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
            **self._checkpointer.describe(),
        }

    @property
    def log_id(self) -> str:
        """The id the genesis record gave this log (a replaced log has another one)."""
        return self._log_id

    def hash_at(self, seq: int) -> str | None:
        """Hash of committed record ``seq``: None past the head or no longer kept (pruned),
        "invalid" when the stored record fails its own check. For start-up checks against
        checkpoints held elsewhere (a witness)."""
        head_seq, head_hash = self._committed
        if seq == head_seq:
            return head_hash
        if seq > head_seq or seq < 1:
            return None
        return self._hash_at(seq)

    def catch_up(self) -> tuple[int, str]:
        """Adopt the head other writers left in the storage, make it durable, and return the
        committed head: what a reader (an export through any node) or a start-up check against
        another writer's checkpoint must look at. Without other writers: the head as it is."""
        with self._io_lock:
            if not self.healthy():
                return self._committed
            self._next_seq, self._next_hash = self._written
            self._follow_storage()
            target = (self._next_seq, self._next_hash)
            if target == self._written:
                return self._committed
            self._written = target
            if not (self._splits_sync and self.durable):
                self._committed = target
                return target
        self._flush_written(target[0])
        return self._committed

    def make_checkpoint(self, now: datetime | None = None) -> dict[str, Any]:
        with self._anchor_lock:  # not _io_lock: writers go on while a checkpoint is signed
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
            self._checkpointer.taken(checkpoint)
            return checkpoint

    def anchor_now(self) -> None:
        """A signed checkpoint of every committed record, copied to the witness before
        returning (service/tokens.py: a record that no stored state is bound to)."""
        if self._committed[0] > self._last_checkpoint_seq:
            self.make_checkpoint()
        self._checkpointer.publish_now()

    def attach_witness(self, witness: Witness) -> None:
        """Copy every checkpoint from now on, starting with the newest, to ``witness``. Called
        once the start-up checks passed, so a log that failed them is never witnessed."""
        latest = self.anchor.last()
        self._checkpointer.attach(witness, None if latest is None or latest.get("corrupt")
                                  else latest)

    def close(self) -> None:
        if not self._closed and self._failed is None:
            self.write_queued()  # records queued for answers that never left: keep them anyway
            if self._written[0] > self._committed[0]:
                try:
                    self._flush_written(self._written[0])
                except AuditUnavailable as exc:
                    log.warning("audit: written records not flushed at close: %s", exc.message)
        self._checkpointer.stop()
        with self._io_lock:
            if self._closed:
                return
            try:
                if self._failed is None:
                    self.catch_up()  # the final checkpoint covers other writers' records too
                if self._failed is None and self._committed[0] > self._last_checkpoint_seq:
                    self.make_checkpoint()
            except AuditUnavailable as exc:
                log.warning("audit: no checkpoint at close: %s", exc.message)
            finally:
                self._closed = True
                self._close_storage()
        self._checkpointer.publish_now()  # the final checkpoint reaches the witness too

    def _abandon(self) -> None:
        """Opening failed: stop the checkpoint thread (the genesis record may have started it)
        and release the storage, writing nothing more."""
        self._closed = True
        self._checkpointer.stop()
        self._close_storage()

    # ---- backend hooks ------------------------------------------------------------------------

    @abstractmethod
    def _persist(self, events: list[PreparedEvent], sync: bool = True) -> list[dict[str, Any]]:
        """Seal ``events`` with ``_seal`` and store them, all or nothing, durably (with every
        record written before them) unless ``sync`` is False and the backend splits syncs;
        raise on failure (setting ``_failed`` when a partial write could not be undone)."""

    def _follow_storage(self) -> None:
        """Under the storage's lock, move the tentative head (``_next_*``) to the head as
        stored, through ``_follow``. Default: this process is the only writer."""

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

    def _follow(self, stored: tuple[int, str] | str) -> None:
        """Continue after ``stored``, the authenticated head another writer left (called by a
        backend under its storage lock, ``_next_*`` holding what this process last wrote), or
        fail closed: a stored head behind ours, or another record at our head, means the
        storage was cut, rolled back or forked; ``stored`` as a str is the problem with the
        stored head's own check (chain.check_line)."""
        if isinstance(stored, str):
            self._failed = (f"the last record of the audit log fails its integrity check "
                            f"({stored}); run `ferrohsm audit verify`, restart to recover")
        elif stored[0] < self._next_seq or (stored[0] == self._next_seq
                                            and stored[1] != self._next_hash):
            self._failed = (f"the stored audit log ends at seq {stored[0]}, behind seq "
                            f"{self._next_seq} this process wrote: truncated or rolled back; "
                            "restart to recover")
        else:
            self._next_seq, self._next_hash = stored
            return
        log.error("audit: %s%s", self._failed, RESTART_NEEDED)
        raise AuditUnavailable(f"audit log unavailable until restart: {self._failed}")

    def _system_event(self, action: str, message: str, **details: DetailValue) -> AuditEvent:
        """A record the sink writes about itself (genesis, segment start, recovery, pruning)."""
        return AuditEvent(actor=SYSTEM_ACTOR, role=SYSTEM_ACTOR, action=action, outcome="success",
                          message=message, details={"log_id": self._log_id, **details})

    def _check_usable(self) -> None:
        if self._closed:
            raise AuditUnavailable("audit log is closed")
        if self._failed is not None:
            raise AuditUnavailable(self._refusal())

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
            started = time.perf_counter()
            try:
                records = self._write_group(events, sync=True)
            except BaseException:
                self._commits_slowly = True
                raise
            took = time.perf_counter() - started
            self._commits_slowly = took > SLOW_COMMIT
            if self.on_sync is not None:
                self.on_sync(took, len(events))
            self._set_head(self._written)  # the flush covered earlier unsynced writes too
            self._maybe_checkpoint()
            return records

    def failure(self, exc: Exception) -> str:
        """What the server log and the 503s say of a failed write: the OS's reason ("No space
        left on device"), else the kind of error; a sink whose library says more overrides it
        (never with record contents)."""
        return getattr(exc, "strerror", None) or type(exc).__name__

    def _write_group(self, events: list[PreparedEvent], sync: bool) -> list[dict[str, Any]]:
        """Seal after the written head and store (durably when ``sync``); caller holds _io_lock."""
        self._check_usable()
        self._next_seq, self._next_hash = self._written
        try:
            records = self._persist(events, sync)
        except Exception as exc:
            if all(e.fields.get("action") == PROBE_ACTION for e in events):
                raise AuditUnavailable("the audit log still refuses records") from None
            self._failures += 1
            self._last_ok = False
            reason = exc.message if isinstance(exc, AuditUnavailable) else self.failure(exc)
            self._problem = f"the last audit write failed: {reason}"
            if isinstance(exc, AuditUnavailable):
                raise
            log.error("audit: %d record(s) could not be made durable: %s%s", len(events), reason,
                      RESTART_NEEDED if self._failed is not None else "")
            raise AuditUnavailable(
                f"audit record could not be made durable: {reason}") from None
        self._written = (self._next_seq, self._next_hash)
        self._records_written += len(events)
        self._last_ok = True
        self._failures_at_ok = self._failures
        if sync or not self._splits_sync or not self.durable:  # durable now: a good one
            self._problem = None
        return records

    def _maybe_checkpoint(self) -> None:
        self._checkpointer.start()  # lazily, with the first group: no thread for an unused sink
        every = self._anchor_every
        seq = self._committed[0]
        if every and seq // every > self._last_checkpoint_seq // every:
            try:
                self.make_checkpoint()
            except AuditUnavailable as exc:  # the records are durable; only the anchor lags
                log.warning("audit: %s", exc.message)

    def _interval_checkpoint(self) -> None:
        """The checkpoint thread's tick: adopt the head other writers left (nodes on one
        database, processes on one file), then sign it if durable records arrived since the
        last checkpoint. So each writer's checkpoints attest the whole log as it stood, not
        only its own records, and a cut of records another writer made is seen within an
        interval: by this writer, which fails closed instead of writing over the gap (its
        head is then ahead of the stored one), and by a verification against its checkpoints."""
        if not self.healthy():
            return
        try:
            self.catch_up()
            if self._committed[0] > self._last_checkpoint_seq:
                self.make_checkpoint()
        except AuditUnavailable as exc:
            log.warning("audit: time checkpoint: %s", exc.message)

    def _probe(self) -> None:
        """The last write failed (the database down, a full disk) and nothing since said
        otherwise: write a record saying the log takes records again, at most every
        PROBE_EVERY seconds. Without it /readyz stayed "not ready" after the cause was gone,
        until a request came, and a load balancer sends no request to a node it took out of
        rotation (an outside tester). A probe that fails changes nothing: it is neither logged
        nor counted as a failed write (``_write_group``)."""
        now = time.monotonic()
        if self._problem is None or not self.healthy() or now < self._probe_after:
            return
        self._probe_after = now + PROBE_EVERY
        failed = self._failures - self._failures_at_ok
        try:
            self.append(self._system_event(
                PROBE_ACTION, f"the audit log takes records again after {failed} failed "
                "write(s)", failed_writes=failed))
        except AuditUnavailable:
            pass

    def _checkpoint_opened(self) -> None:
        """At open, once the head is known and checked (and any genesis or recovery record is
        written): cover it with a checkpoint, so every log has a checkpoints file from its first
        record on and a missing one is evidence, not an accident of timing."""
        if self._committed[0] > self._last_checkpoint_seq:
            self.make_checkpoint()

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
        if isinstance(seq, int) and seq > head_seq:  # another writer may have gone on since
            head_seq, head_hash = self.catch_up()
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
