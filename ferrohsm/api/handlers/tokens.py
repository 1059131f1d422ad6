"""Token revocation: ``POST /v1/tokens/revoke {jti, exp?}`` (Administrators); and
``GET /v1/whoami``, the caller's own token as the server reads it (any role).

Parse, call the service (service/tokens.py: authorization, the deny-list, the audit record),
answer.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ...auth.permissions import Action
from ...domain.model import RequestContext, iso
from ...service import TokenService
from ..http import Request
from ..router import Operation, Router
from .common import Field, Reply, fields, query


def register(router: Router, tokens: TokenService) -> None:
    def revoke(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        body = fields(req, {"jti": Field(str, True), "exp": Field(int)})
        until = tokens.revoke(ctx, body["jti"], body.get("exp"))
        return 200, {"jti": body["jti"], "revoked": True,
                     "until": iso(datetime.fromtimestamp(until, UTC))}

    router.add("POST", "/v1/tokens/revoke", revoke, name="revokeToken", doc=Operation(
        "Deny-list a token by its jti until it expires (Administrators)", ("tokens",),
        Action.TOKEN_REVOKE, request="RevokeToken", response="TokenRevoked"))

    def whoami(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        query(req, set())
        return 200, tokens.whoami(ctx)

    router.add("GET", "/v1/whoami", whoami, name="whoami", doc=Operation(
        "The caller's token as the server reads it: subject, role, tags, expiry (any role)",
        ("tokens",), Action.TOKEN_WHOAMI, response="WhoAmI"))
