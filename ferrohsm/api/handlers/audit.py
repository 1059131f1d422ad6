"""GET /v1/audit: auditors page through the log as the sink stored it (verifiable JSONL)."""

from __future__ import annotations

from ...auth.permissions import Action
from ...domain.model import RequestContext
from ...service import AuditLogService
from ..http import Request
from ..router import Operation, Router
from .common import Reply, int_param, query

MAX_LIMIT = 1000


def register(router: Router, audit_log: AuditLogService) -> None:
    def records(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        q = query(req, {"after_seq", "limit"})
        after = int_param(q.get("after_seq"), "after_seq", 0, 10**15) or 0
        limit = int_param(q.get("limit"), "limit", 1, MAX_LIMIT) or 100
        return 200, audit_log.read(ctx, after, limit)

    router.add("GET", "/v1/audit", records, name="readAudit", doc=Operation(
        "Audit records after a sequence number (verifiable JSONL records)", ("audit",),
        Action.AUDIT_READ, response="AuditPage", query=("afterSeq", "limit")))
