"""Approval routes (dual control): list, describe, approve, deny."""

from __future__ import annotations

from ...auth.permissions import Action
from ...domain.model import RequestContext, plain_text
from ...service import ApprovalService
from ...store.keystore import MAX_PAGE
from ..http import Request
from ..router import Operation, Router
from .common import Field, Reply, fields, int_param, query

MAX_COMMENT = 256
TAGS = ("approvals",)


def _vote(req: Request) -> tuple[str, str | None]:
    """An optional ``{"comment": "...", "signature": "..."}`` body: the comment is kept in the
    approval and the audit record; the signature (a signed vote) is checked by the service."""
    body = fields(req, {"comment": Field(str), "signature": Field(str)})
    comment = plain_text(str(body.get("comment", "")), "comment", MAX_COMMENT)
    signature = body.get("signature")
    return comment, str(signature) if signature is not None else None


def register(router: Router, approvals: ApprovalService) -> None:
    def listing(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        q = query(req, {"state", "limit", "page_token"})
        limit = int_param(q.get("limit"), "limit", 1, MAX_PAGE) or 100
        return 200, approvals.list(ctx, q.get("state"), limit, q.get("page_token"))

    def show(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        query(req, set())
        return 200, approvals.get(ctx, p["id"])

    def approve(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        return 200, approvals.decide(ctx, p["id"], True, *_vote(req))

    def deny(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        return 200, approvals.decide(ctx, p["id"], False, *_vote(req))

    router.add("GET", "/v1/approvals", listing, name="listApprovals", doc=Operation(
        "Approvals, optionally by state (dual control)", TAGS, Action.APPROVAL_LIST,
        response="ApprovalList", query=("approvalState", "limit", "pageToken")))
    router.add("GET", "/v1/approvals/{id}", show, name="getApproval", doc=Operation(
        "Describe an approval", TAGS, Action.APPROVAL_LIST, response="Approval"))
    router.add("POST", "/v1/approvals/{id}/approve", approve, name="approveRequest",
               doc=Operation("Approve a parked request (Administrator/Operator, not the "
                             "requester; once each)", TAGS, Action.APPROVAL_DECIDE,
                             request="ApprovalVoteRequest", response="Approval",
                             errors=(409,)))
    router.add("POST", "/v1/approvals/{id}/deny", deny, name="denyRequest", doc=Operation(
        "Refuse a parked request", TAGS, Action.APPROVAL_DECIDE,
        request="ApprovalVoteRequest", response="Approval", errors=(409,)))
