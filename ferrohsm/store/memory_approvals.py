"""Approvals in a dict behind a lock: the reference semantics every ApprovalStore is checked
against, and the store used with the memory key store (nothing survives a restart there anyway).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

from ..domain.approval import FINISHED, OPEN, Approval, ApprovalState, effective_state
from ..domain.errors import Conflict, NotFound, StaleRevision
from .approvalstore import ApprovalStore


class MemoryApprovalStore(ApprovalStore):
    """A dict behind a lock: the reference semantics the SQLite store is checked against."""

    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, Approval] = {}

    def create(self, approval: Approval) -> Approval:
        stored = replace(approval, revision=1)
        with self._lock:
            if approval.id in self._rows:
                raise Conflict(f"an approval with id {approval.id} already exists")
            self._rows[approval.id] = stored
        return stored

    def create_once(self, approval: Approval, now: datetime,
                    same: Callable[[Approval], bool]) -> Approval:
        with self._lock:
            for row in sorted(self._rows.values(), key=lambda a: a.id):
                if row.key_id == approval.key_id and row.action == approval.action \
                        and effective_state(row, now) in OPEN and same(row):
                    return row
            if approval.id in self._rows:
                raise Conflict(f"an approval with id {approval.id} already exists")
            stored = self._rows[approval.id] = replace(approval, revision=1)
        return stored

    def get(self, approval_id: str) -> Approval:
        with self._lock:
            found = self._rows.get(approval_id)
        if found is None:
            raise NotFound("no such approval")
        return found

    def swap(self, approval: Approval) -> Approval:
        stored = replace(approval, revision=approval.revision + 1)
        with self._lock:
            current = self._rows.get(approval.id)
            if current is None:
                raise NotFound("no such approval")
            if current.revision != approval.revision:
                raise StaleRevision(f"approval {approval.id} changed; read it again")
            self._rows[approval.id] = stored
        return stored

    def delete(self, approval_id: str) -> None:
        with self._lock:
            if self._rows.pop(approval_id, None) is None:
                raise NotFound("no such approval")

    def _all(self) -> Sequence[Approval]:
        with self._lock:
            return sorted(self._rows.values(), key=lambda a: a.id)

    def list(self, state: ApprovalState | None, now: datetime, limit: int = 100,
             after: str | None = None) -> Sequence[Approval]:
        found = [a for a in self._all() if (after is None or a.id > after)
                 and (state is None or effective_state(a, now) is state)]
        return found[:limit]

    def expiring(self, now: datetime, limit: int = 1000) -> Sequence[Approval]:
        return [a for a in self._all() if a.state in OPEN and a.expires_at <= now][:limit]

    def latest_executed(self, key_id: str, action: str) -> Approval | None:
        done = [a for a in self._all() if a.key_id == key_id and a.action == action
                and a.state is ApprovalState.EXECUTED and a.executed_at is not None]
        return max(done, key=lambda a: (a.executed_at, a.id), default=None)

    def prune(self, finished_before: datetime) -> int:
        with self._lock:
            old = [i for i, a in self._rows.items()
                   if a.state in FINISHED and a.updated_at < finished_before]
            for approval_id in old:
                del self._rows[approval_id]
        return len(old)

