"""Vault's ``auth/token/lookup-self`` (GET, and POST as Vault also takes it): the caller's own
token in Vault's shape, so a Vault client can tell a usable token from a refused one (hvac's
``Client.is_authenticated()`` is this call, and was always False without it).

It is the native ``GET /v1/whoami`` underneath (service/tokens.py ``whoami``): the same
authentication (X-Vault-Token or Authorization; a bad, revoked or expired token is Vault's 403),
the same rate limit, the same audit record (``token.whoami``). Only the answer is translated,
and only into what FerroHSM can say truthfully: Vault fields it has no meaning for are the
values Vault gives a token without them (no entity, no uses limit, no parent). ``id`` is
empty, never the token: the caller already holds it, and a bearer token written into a response
body can end up in client logs, proxies and debugging output it would otherwise never reach.
``accessor`` is the token's ``jti``, which plays the accessor's part here (revocation by
``POST /v1/tokens/revoke`` without the token itself). Not in /v1/openapi.json: like the transit
routes it is Vault's API (README.md, "Vault transit compatibility").
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from ...domain.model import Principal, RequestContext
from ...service import TokenService
from ..http import Request, Response
from ..router import Router
from ..transit.envelope import ok
from .common import query

LOOKUP_SELF = "/v1/auth/token/lookup-self"


def lookup_self_data(principal: Principal, whoami: dict[str, Any], now: float
                     ) -> dict[str, Any]:
    """Vault's lookup-self ``data`` for ``principal`` (``whoami``: the native answer, kept
    under ``ferrohsm`` as key info keeps FerroHSM's own view; Vault clients ignore it)."""
    issued, expires = principal.issued_at, principal.expires_at
    return {
        "id": "",  # never the bearer token (module docstring)
        "accessor": principal.token_id or "",
        "display_name": principal.subject,
        "policies": [principal.role.value],
        "meta": ({"tags": ",".join(sorted(principal.tags))}
                 if principal.tags is not None else None),
        "type": "service",
        "renewable": False,
        "orphan": True,  # FerroHSM tokens have no parent token
        "num_uses": 0,
        "path": "",
        "entity_id": "",
        "explicit_max_ttl": 0,
        "creation_time": issued if issued is not None else 0,
        "creation_ttl": expires - issued if expires is not None and issued is not None else 0,
        "issue_time": _rfc3339(issued),
        "expire_time": _rfc3339(expires),
        "ttl": max(0, int(expires - now)) if expires is not None else 0,
        "ferrohsm": whoami,
    }


def _rfc3339(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def register(router: Router, tokens: TokenService) -> None:
    """The route, undocumented in OpenAPI (module docstring)."""
    def lookup_self(ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        query(req, set())
        whoami = tokens.whoami(ctx)  # the audited read; refuses an anonymous caller
        assert ctx.principal is not None  # noqa: S101  narrows a type: whoami refused None
        return ok(req.request_id, lookup_self_data(ctx.principal, whoami, time.time()))

    for method in ("GET", "POST", "PUT"):  # Vault takes a PUT as a POST
        router.add(method, LOOKUP_SELF, lookup_self)
