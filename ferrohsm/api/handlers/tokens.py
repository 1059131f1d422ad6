"""Token revocation: ``POST /v1/tokens/revoke {jti, exp?}`` (Administrators).

The deny-list is keyed by ``jti`` (see ferrohsm/denylist.py for why never by token text). The
entry is persisted before the answer, and kept for as long as any token carrying that ``jti``
could still be accepted, so ``exp`` is optional. Allowed and refused calls are both audited.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ...auth.authn import Authenticator
from ...auth.denylist import valid_jti
from ...auth.permissions import Action, authorize
from ...domain.errors import BadRequest, FerroError, Forbidden
from ...domain.model import RequestContext, iso
from ..http import Request
from ..router import Operation, Router
from .common import Field, Reply, fields

Record = Callable[..., Any]  # KeyService.record(ctx, action, outcome, message, **details)


def register(router: Router, authenticator: Authenticator, record: Record) -> None:
    def revoke(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        try:
            authorize(ctx.principal, Action.TOKEN_REVOKE)
            body = fields(req, {"jti": Field(str, True), "exp": Field(int)})
            if not valid_jti(body["jti"]):
                raise BadRequest("jti must be 1-128 printable characters")
            until = authenticator.revoke(body["jti"], body.get("exp"))
        except FerroError as exc:
            outcome = "denied" if isinstance(exc, Forbidden) else "error"
            record(ctx, Action.TOKEN_REVOKE, outcome, exc.message)
            raise
        record(ctx, Action.TOKEN_REVOKE, "success", f"token {body['jti']} revoked",
               jti=body["jti"])
        return 200, {"jti": body["jti"], "revoked": True,
                     "until": iso(datetime.fromtimestamp(until, UTC))}

    router.add("POST", "/v1/tokens/revoke", revoke, name="revokeToken", doc=Operation(
        "Deny-list a token by its jti until it expires (Administrators)", ("tokens",),
        Action.TOKEN_REVOKE, request="RevokeToken", response="TokenRevoked"))
