"""The approvals API as service operations: list, describe, approve, deny.

Each runs inside the guarded call (service/guard.py), so its refusal is recorded exactly once;
the mechanics (store, state table, compare-and-swap, transition records) are DualControl's.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..auth.permissions import Action
from ..control.dualcontrol import DualControl
from ..control.voting import VoteRules
from ..domain import approval as apv
from ..domain.model import RequestContext
from .guard import Guard


class ApprovalService:
    def __init__(self, guard: Guard, dual: DualControl, clock: Callable[[], datetime]) -> None:
        self.guard = guard
        self.dual = dual
        self.clock = clock
        self.rules = VoteRules()  # who may vote and with what proof (app.py sets the configured)

    def list(self, ctx: RequestContext, state: str | None, limit: int = 100,
             page_token: str | None = None) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            now = self.clock()
            page, next_token = self.dual.page(state, limit, page_token, now)
            self.guard.record(ctx, Action.APPROVAL_LIST, "success",
                              f"listed {len(page)} approvals")
            return {"approvals": [apv.view(a, now) for a in page], "next_page_token": next_token}
        return self.guard.run(ctx, Action.APPROVAL_LIST, work)

    def get(self, ctx: RequestContext, approval_id: str) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            found = self.dual.find(approval_id)
            self.guard.record(ctx, "approval.read", "success", "described approval",
                              key_id=found.key_id, approval_id=found.id)
            return apv.view(found, self.clock())
        return self.guard.run(ctx, Action.APPROVAL_LIST, work,
                              key_of=lambda: self.dual.key_of(approval_id))

    def decide(self, ctx: RequestContext, approval_id: str, approve: bool,
               comment: str = "", signature: str | None = None) -> dict[str, Any]:
        """One approver's vote; refusals (the requester, a repeated approver, a finished or
        expired approval, a token or signature the vote rules refuse) name the key the approval
        is bound to."""
        def work() -> dict[str, Any]:
            voter = ctx.principal
            assert voter is not None  # noqa: S101  narrows a type: the role check refuses anonymous callers
            self.rules.check_token(voter)
            return self.dual.vote(ctx, voter, approval_id, approve, comment,
                                  lambda current: self.rules.check_signature(
                                      voter, current, approve, signature))
        return self.guard.run(ctx, Action.APPROVAL_DECIDE, work,
                              key_of=lambda: self.dual.key_of(approval_id))
