"""GET /v1/audit: auditors page through the log as the sink stored it (verifiable JSONL)."""

from __future__ import annotations

from typing import Any, Protocol

from ...auth.permissions import Action
from ...domain.model import RequestContext
from ...service import KeyService
from ..http import Request
from ..router import Operation, Router
from .common import Reply, int_param, query

MAX_LIMIT = 1000


class AuditReader(Protocol):
    def read(self, after_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]: ...
    def head(self) -> tuple[int, str]: ...


def register(router: Router, service: KeyService, reader: AuditReader) -> None:
    def records(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        q = query(req, {"after_seq", "limit"})
        after = int_param(q.get("after_seq"), "after_seq", 0, 10**15) or 0
        limit = int_param(q.get("limit"), "limit", 1, MAX_LIMIT) or 100
        service.authorize(ctx, Action.AUDIT_READ)
        page = reader.read(after, limit)
        service.record(ctx, Action.AUDIT_READ, "success",
                       f"read {len(page)} audit records after seq {after}")
        next_after = page[-1]["seq"] if len(page) == limit else None
        return 200, {"records": page, "next_after_seq": next_after,
                     "head_seq": reader.head()[0]}

    router.add("GET", "/v1/audit", records, name="readAudit", doc=Operation(
        "Audit records after a sequence number (verifiable JSONL records)", ("audit",),
        Action.AUDIT_READ, response="AuditPage", query=("afterSeq", "limit")))
