"""Token revocation as a service operation: deny-list a ``jti`` (Administrators); and
``whoami``, the caller's own token as the server reads it (any role).

The deny-list is keyed by ``jti`` (auth/denylist.py says why never by token text). The entry is
recorded in the audit log, then persisted, before the answer, and kept for as long as any token
carrying that ``jti`` could still be accepted, so ``exp`` is optional. Then the log is anchored
(``anchor``: a signed checkpoint, and its copy to a witness): nothing stored is bound to a
revocation's record as a key record is to its change's, so only a checkpoint after it shows
that record cut from the log. Runs inside the guarded
call: allowed and refused calls leave one audit record each.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from ..auth.denylist import valid_jti
from ..auth.permissions import Action
from ..domain.errors import AuditUnavailable, BadRequest
from ..domain.model import RequestContext, iso
from .guard import Guard

log = logging.getLogger("ferrohsm.audit")


class Revoker(Protocol):
    """auth.authn.Authenticator: how long a revocation lasts, and the deny-list entry."""

    def revocation_until(self, exp: int | None, at: float | None = None) -> float: ...

    def deny(self, jti: str, until: float) -> None: ...


# 9999-12-30T23:59:59Z: the entry is kept until exp plus the leeway (at most 300 s), and that
# must still be a date (datetime ends with 9999)
MAX_EXP = 253_402_214_399


class TokenService:
    def __init__(self, guard: Guard, revoker: Revoker, anchor: Callable[[], None]) -> None:
        self.guard = guard
        self.revoker = revoker
        self.anchor = anchor

    def revoke(self, ctx: RequestContext, jti: str, exp: int | None = None) -> float:
        """Deny-list ``jti``; the epoch second until which the entry is kept."""
        def work() -> float:
            if not valid_jti(jti):
                raise BadRequest("jti must be 1-128 characters, without control, line-separator "
                                 "or bidi-override characters")
            if exp is not None and not 0 <= exp <= MAX_EXP:
                raise BadRequest("exp must be the token's expiry in Unix seconds, "
                                 f"0-{MAX_EXP} (1970 to 9999-12-30)")
            self.guard.require_audit()
            until = float(math.ceil(self.revoker.revocation_until(exp)))  # whole seconds
            # recorded (durable) first: the log is what start-up rebuilds the deny-list from
            # (Authenticator.restore_revocations), so no entry exists without its record
            self.guard.record(ctx, Action.TOKEN_REVOKE, "success", f"token {jti} revoked",
                              jti=jti, until=int(until))
            self.revoker.deny(jti, until)
            try:
                self.anchor()
            except AuditUnavailable as exc:  # the revocation stands (recorded, in force)
                log.warning("token %s revoked, but no checkpoint covers its record yet: %s",
                            jti, exc.message)
            return until
        return self.guard.run(ctx, Action.TOKEN_REVOKE, work)

    def whoami(self, ctx: RequestContext) -> dict[str, Any]:
        """The caller as the server sees its token (any role; a read, recorded like the
        others): what a confused operator needs to know why a call is refused."""
        def work() -> dict[str, Any]:
            principal = ctx.principal
            assert principal is not None  # noqa: S101  the guard refused an anonymous caller
            self.guard.record(ctx, Action.TOKEN_WHOAMI, "success", "token described")
            expires = principal.expires_at
            return {"subject": principal.subject, "role": principal.role.value,
                    "tags": sorted(principal.tags) if principal.tags is not None else None,
                    "expires_at": iso(datetime.fromtimestamp(expires, UTC))
                    if expires is not None else None,
                    "jti": principal.token_id, "session": principal.session}
        return self.guard.run(ctx, Action.TOKEN_WHOAMI, work)
