"""Reading the audit log as a service operation: auditors page through it as the sink stored it
(verifiable JSONL records). Runs inside the guarded call, so a read, allowed or refused, is
itself recorded once."""

from __future__ import annotations

from typing import Any, Protocol

from ..auth.permissions import Action
from ..domain.model import RequestContext
from .guard import Guard


class AuditReader(Protocol):
    def read(self, after_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]: ...
    def head(self) -> tuple[int, str]: ...


class AuditLogService:
    def __init__(self, guard: Guard, reader: AuditReader) -> None:
        self.guard = guard
        self.reader = reader

    def read(self, ctx: RequestContext, after: int = 0, limit: int = 100) -> dict[str, Any]:
        """Up to ``limit`` records after seq ``after``, where the next page starts (None at the
        end) and the log's head seq (which counts this read's own record)."""
        def work() -> dict[str, Any]:
            page = self.reader.read(after, limit)
            self.guard.record(ctx, Action.AUDIT_READ, "success",
                              f"read {len(page)} audit records after seq {after}")
            next_after = page[-1]["seq"] if len(page) == limit else None
            return {"records": page, "next_after_seq": next_after,
                    "head_seq": self.reader.head()[0]}
        return self.guard.run(ctx, Action.AUDIT_READ, work)
