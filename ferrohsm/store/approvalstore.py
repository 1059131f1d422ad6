"""The ApprovalStore port: durable approvals, written by compare-and-swap.

Approvals must survive restarts: with a file or SQLite key store they live in
``<data_dir>/approvals.sqlite3`` (``sqlite_approvals``), beside the keys and independent of the key
store's format. With the memory key store nothing survives a restart anyway, so
``memory_approvals`` is used. With the PostgreSQL key store they live in its database
(``postgres_approvals``), shared by every node.

Writes are compare-and-swap on ``Approval.revision``: ``swap(a)`` succeeds only while the stored
revision still equals ``a.revision``. That single primitive makes concurrent votes lose nothing
and lets exactly one of N concurrent repeats consume an approval (pending/approved -> executed).

Listing filters on the *effective* state (an open approval past ``expires_at`` lists as expired
even before the scheduler persists that). Every implementation passes
tests/conformance/test_approval_store.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from ..domain.approval import OPEN, Approval, ApprovalState, effective_state


class ApprovalStore(ABC):
    """Durable approvals. Implementations must be safe to call from many threads."""

    name = "abstract"

    @abstractmethod
    def create(self, approval: Approval) -> Approval:
        """Insert; returns it with revision 1. Conflict when the id exists."""

    @abstractmethod
    def create_once(self, approval: Approval, now: datetime,
                    same: Callable[[Approval], bool]) -> Approval:
        """``create``, unless an open approval (not expired at ``now``) of the same key and
        action for which ``same`` holds exists: then that one, and nothing is written. Atomic
        across threads, processes and nodes, so N identical requests parked at once make one
        approval (ApprovalService: a repeat gets the open one)."""

    @abstractmethod
    def get(self, approval_id: str) -> Approval:
        """NotFound when absent."""

    @abstractmethod
    def swap(self, approval: Approval) -> Approval:
        """Store ``approval`` if the stored revision equals its revision (StaleRevision
        otherwise, NotFound when absent); returns it with revision + 1."""

    @abstractmethod
    def delete(self, approval_id: str) -> None:
        """Remove one approval (tests and tooling; the service records its intent before it
        creates one, so it never undoes a creation). NotFound."""

    @abstractmethod
    def list(self, state: ApprovalState | None, now: datetime, limit: int = 100,
             after: str | None = None) -> Sequence[Approval]:
        """Approvals whose effective state is ``state`` (all when None), id > ``after``,
        ascending id (ids are UUIDv7, so creation order), at most ``limit``."""

    @abstractmethod
    def expiring(self, now: datetime, limit: int = 1000) -> Sequence[Approval]:
        """Open approvals (pending/approved, as stored) whose window closed at or before now."""

    @abstractmethod
    def latest_executed(self, key_id: str, action: str) -> Approval | None:
        """The most recently executed approval of ``action`` on ``key_id`` (attestations)."""

    @abstractmethod
    def prune(self, finished_before: datetime) -> int:
        """Delete finished (denied/expired/executed) approvals last changed before the cutoff;
        returns how many. Open approvals are never pruned."""

    def close(self) -> None:
        """Release connections. Idempotent."""

    def describe(self) -> dict[str, object]:
        return {"backend": self.name}


# The SQL both database stores (SQLite, PostgreSQL) share; ``mark`` is the driver's placeholder.
OPEN_SQL = "('pending', 'approved')"
FINISHED_SQL = "('denied', 'expired', 'executed')"


def in_state(found: Sequence[Approval], state: ApprovalState | None,
             now: datetime) -> list[Approval]:
    """The approvals of a listing whose authenticated record (not the indexed ``state`` column,
    which anyone who can write the database could change) is in ``state``."""
    return [a for a in found if state is None or effective_state(a, now) is state]


TWINS_SQL = (f"key_id = {{m}} AND action = {{m}} AND state IN {OPEN_SQL} AND expires_at > {{m}} "
             "ORDER BY id")  # the open approvals create_once compares with


def state_clause(state: ApprovalState | None, now: Any, mark: str) -> tuple[str, list[Any]]:
    """WHERE fragment selecting an EFFECTIVE state (expiry computed against ``now``)."""
    if state is None:
        return "1 = 1", []
    if state in OPEN:
        return f"state = {mark} AND expires_at > {mark}", [state.value, now]
    if state is ApprovalState.EXPIRED:
        return f"(state = 'expired' OR (state IN {OPEN_SQL} AND expires_at <= {mark}))", [now]
    return f"state = {mark}", [state.value]
