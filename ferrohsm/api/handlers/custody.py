"""``POST /v1/sys/seal`` and ``POST /v1/sys/unseal`` as the unsealed runtime answers them.

While a split-knowledge server is sealed, custody/gate.py answers both itself (unseal without a
token); once it is open, the gate still answers unseal (the status), and seal comes here:
Administrators only, audited, then the gate drops the runtime. With the environment-variable
master key there is nothing to seal (the key would be read again from the environment) and
nothing to unseal: both are 409 ``conflict``, so a custodian who sends a share to the wrong
server is told it was not used rather than that it worked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...auth.permissions import Action
from ...domain.errors import BadRequest, Conflict
from ...domain.model import RequestContext
from ...service.guard import Guard
from ..http import Request
from ..router import Operation, Router
from .common import Field, Reply, fields

TAGS = ("system",)
SHARE = {"share": Field(str, required=True)}
MAX_SHARE = 400  # UnsealShare.share.maxLength (api/openapi.py)
ENV_MODE = ('this server reads its master key from the environment ([secrets] unseal = '
            '"env"): there is nothing to {}; split-knowledge mode is set up with '
            "`ferrohsm init --shares N --threshold T`")
NOT_SEALABLE = ENV_MODE.format("seal")


def register(router: Router, guard: Guard, seal: Callable[[RequestContext], None] | None,
             status: Callable[[], dict[str, Any]]) -> None:
    def do_seal(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        if req.body:
            fields(req, {})

        def work() -> dict[str, Any]:
            if seal is None:
                raise Conflict(NOT_SEALABLE)
            guard.record(ctx, Action.SYSTEM_SEAL, "success", "sealing requested: the master "
                         "key and derived keys are dropped once requests in flight answer")
            seal(ctx)
            return {"sealed": True}
        return 200, guard.run(ctx, Action.SYSTEM_SEAL, work)

    def unseal_status(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        # the body the route documents (UnsealShare), checked first: a malformed one is a 400
        if len(fields(req, SHARE)["share"]) > MAX_SHARE:
            raise BadRequest(f"share must be at most {MAX_SHARE} characters")
        if seal is None:  # no split knowledge here: the share was not used (the gate answers
            raise Conflict(ENV_MODE.format("unseal; the share was not used"))  # an open one)
        return 200, status()

    router.add("POST", "/v1/sys/seal", do_seal, name="seal", doc=Operation(
        "Seal a split-knowledge server again (Administrators)", TAGS, Action.SYSTEM_SEAL,
        response="SealStatus", errors=(409,),
        description="Drops the master key, the derived keys and the unsealed-key cache once the "
                    "requests in flight have answered; from then on only health and unseal "
                    "answer until a threshold of shares is submitted again. 409 when the "
                    "master key comes from the environment."))
    router.add("POST", "/v1/sys/unseal", unseal_status, name="unseal", doc=Operation(
        "Submit one unseal share (no token while sealed)", TAGS, request="UnsealShare",
        response="SealStatus", errors=(409,),
        description="While the server is sealed it answers this route itself, without a token "
                    "(rate limited per source address): each share counts towards the "
                    "threshold; a set that does not reconstruct the master key is refused "
                    "(400 wrong_shares) and progress starts again. Once open it answers the "
                    "seal status. 409 when the master key comes from the environment (there "
                    "is nothing to unseal; the share is not used)."))
