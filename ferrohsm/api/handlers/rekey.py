"""``POST /v1/sys/rekey``: rotate the master key while serving (custody/online.py runs it).

Administrators only; under dual control when ``[approvals] rekey_approvals_required`` > 0: the
first request is parked (202, an approval whose target is ``system``), other Administrators or
Operators vote on it like on any approval, and the requester repeats the request with
``X-Approval-ID``, which redeems it exactly once. The optional ``reason`` is bound to the approval.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from ...auth.permissions import Action
from ...control.dualcontrol import DualControl
from ...domain.errors import Conflict
from ...domain.model import RequestContext, plain_text
from ...service.guard import Guard
from ..http import Request
from ..router import Operation, Router
from .common import Field, Reply, fields

MAX_REASON = 256
REASON = {"reason": Field(str)}
Run = Callable[[RequestContext], dict[str, Any]]


def register(router: Router, guard: Guard, dual: DualControl, run: Run, required: int,
             ttl_seconds: int) -> None:
    def do_rekey(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        body = fields(req, REASON) if req.body else {}
        reason = plain_text(str(body.get("reason", "")), "reason", MAX_REASON)

        def work() -> dict[str, Any]:
            if required == 0 and ctx.approval_id is not None:  # else recorded as authorising it
                raise Conflict("X-Approval-ID was given, but a rekey here needs no approval "
                               "([approvals].rekey_approvals_required = 0): send it without")
            if required > 0:
                dual.gate_system(ctx, Action.SYSTEM_REKEY, {"reason": reason}, required,
                                 timedelta(seconds=ttl_seconds))
            result = run(ctx)
            guard.record(ctx, Action.SYSTEM_REKEY, "success", "master key rotated while "
                         f"serving ({result['rewritten']} key record(s) re-sealed)"
                         + (f": {reason}" if reason else ""), rewritten=result["rewritten"])
            return result
        return 200, guard.run(ctx, Action.SYSTEM_REKEY, work)

    router.add("POST", "/v1/sys/rekey", do_rekey, name="rekey", doc=Operation(
        "Rotate the master key while serving (Administrators; dual control when configured)",
        ("system",), Action.SYSTEM_REKEY, request="RekeyRequest", response="RekeyResult",
        errors=(409,),
        description="Generates a new master key, re-seals every key version and re-MACs every "
                    "key record under it (crash-safe: the journal lets the next start finish "
                    "it), and swaps it in; requests wait (up to 30 s, then 503 "
                    "rekey_in_progress) while records are rewritten. The new key is written "
                    "0600 to [secrets].master_key_file (never returned). 409 when the master "
                    "key comes from FERROHSM_MASTER_KEY or split-knowledge shares: use the "
                    "offline `ferrohsm rekey`. With [approvals].rekey_approvals_required the "
                    "first request answers 202 with an approval targeting \"system\"."))
