"""The AuditSink port: what the service layer writes audit records through, and the Ticket it gets
back for a record whose durability it will wait for later. The machinery every concrete sink
shares (group commit, chain state, many writers, checkpoints) is in sinkbase.py."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, overload

from .chain import AuditEvent


class Ticket:
    """What ``append(event, durable=False)`` returns: one record's claim to durability.

    A value the caller keeps and hands back to its sink (``is_durable``, ``wait``); only the sink
    sets its fields: ``seq`` is 0 while the record is queued and its seq once it is written,
    ``error`` says why it will never be durable.
    """

    __slots__ = ("error", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.error: str | None = None

    def __repr__(self) -> str:
        return f"Ticket(seq={self.seq}, error={self.error!r})"


class AuditSink(ABC):
    """Append-only, hash-chained, HMAC-authenticated audit log. Safe to call from many threads."""

    @overload
    def append(self, event: AuditEvent, *, durable: Literal[True] = ...) -> dict[str, Any]: ...
    @overload
    def append(self, event: AuditEvent, *, durable: Literal[False]) -> Ticket: ...
    @overload
    def append(self, event: AuditEvent, *, durable: bool) -> dict[str, Any] | Ticket: ...
    @abstractmethod
    def append(self, event: AuditEvent, *, durable: bool = True) -> dict[str, Any] | Ticket:
        """Seal and store ``event``; return the sealed record once durable, else raise
        AuditUnavailable. With ``durable=False``: queue it and return its ``Ticket`` at once
        (AuditUnavailable only when the sink already refuses every record)."""

    @abstractmethod
    def append_group(self, events: list[AuditEvent]) -> list[dict[str, Any]]:
        """Records appended as one durable group, in order; their sealed records."""

    @abstractmethod
    def write_queued(self) -> None:
        """Seal and write every queued record now, in this thread, as one group; each ticket
        gets its seq, or its error when the write failed (this does not raise for that)."""

    def commits_in_write(self) -> bool:
        """Whether ``write_queued`` commits (waits for the storage) rather than only writes:
        the event loop then leaves it to the flusher's thread (api/dispatch.py)."""
        return False

    @abstractmethod
    def is_durable(self, ticket: Ticket) -> bool:
        """Whether ``ticket``'s record is durable, without blocking; AuditUnavailable once it
        never will be."""

    @abstractmethod
    def wait(self, ticket: Ticket) -> None:
        """Return once ``ticket``'s record is durable (writing it first if it is still queued,
        then flushing everything written so far), else raise AuditUnavailable."""

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

    def degraded(self) -> str | None:
        """Why the audit log is not taking records right now, None when it is: unlike
        ``healthy()`` (False only until a restart), this is also set by a failure the sink
        cleanly undid (a full disk: EFBIG, ENOSPC), from that failed write or flush until the
        next one that succeeds. What /healthz and the ferrohsm_audit_healthy gauge report."""
        return None if self.healthy() else "the audit log is unavailable"

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Status for /healthz: backend, head, counters. Never paths to secrets, never keys."""

    @abstractmethod
    def fail_closed(self, reason: str) -> None:
        """Refuse every further record until a restart (fail closed), as after a write the sink
        could not undo. For a caller whose change is applied, or may be, but whose settling
        record could not be written: start-up reconciliation settles it from the log and the
        store (integrity/reconcile.py)."""

    def fail_until_recorded(self, reason: str,
                            settle: AuditEvent | Callable[[], AuditEvent]) -> None:
        """Fail closed because a change's settling record could not be written (``settle``: the
        record, or what makes it once the store can tell); a sink that can retry it ends the
        failure once it is written (sinkbase.py). Here: until a restart, as ``fail_closed``."""
        self.fail_closed(reason)

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
