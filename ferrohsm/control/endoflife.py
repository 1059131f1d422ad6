"""Retention to the end of a key's life: ``purge_after_days`` and ``max_key_age_days``.

Called by the retention scheduler (scheduler.py) for each candidate key, once per tick:

* ``purge``: an ARCHIVED, non-primary version archived longer than ``purge_after_days`` ago (the
  moment comes from the key's history, lifecycle.archived_at) has its material erased now
  (``KeyService.destroy_version``, audited as ``scheduler.purge`` with an attestation: the
  SHA-256 of the erased sealed blob, the store, the approval).
* ``retire``: a key (active or revoked) created more than ``max_key_age_days`` ago is scheduled
  for destruction with its grace period (``scheduler.max_age``); the scheduler's existing destroy
  step erases it when the grace ends, with its ``key.destroy_complete`` attestation.

Both are decided like an Administrator's own request (the scheduler's identity, ``system``, is
one): when the key's tags put ``destroy`` / ``destroy-version`` under dual control, the scheduler
does not act on its own authority. It parks an approval requested by ``system`` (the records of
``approval.requested``) and, on later ticks, looks for that approval of this exact request:

* none open: park one (the request is bound as any other: action, key, arguments);
* pending: wait (nothing is recorded: the approval's own records say who voted);
* approved: repeat the request with the approval's id, so the dual-control gate consumes it
  (approved -> executed, compare-and-swap) before anything runs: it executes once;
* denied less than the tag's approval window ago: wait; after that it asks again, so a denial
  stops a purge for a window, not forever (change the tag to stop it for good).

Nothing is kept in memory between ticks: every step is re-derived from the key and the approvals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from ..auth.permissions import Action
from ..domain import approval as apv
from ..domain.errors import ApprovalRequired, FerroError
from ..domain.lifecycle import archived_at
from ..domain.model import Key, KeyState, RequestContext, VersionState
from .dualcontrol import DualControl
from .policy import Policy, Rules, Verdict, decide

log = logging.getLogger("ferrohsm.scheduler")
LIVE = (KeyState.ACTIVE, KeyState.REVOKED)
SCAN_PAGE = 500
SCAN_PAGES = 20


def purgeable(key: Key, rules: Rules, now: datetime) -> list[int]:
    """Archived non-primary versions whose archival is older than purge_after. Pure."""
    if rules.purge_after is None or key.state not in LIVE:
        return []
    due = []
    for v in key.versions:
        if v.state is VersionState.ARCHIVED and v.version != key.primary_version:
            since = archived_at(key, v.version)
            if since is not None and since + rules.purge_after <= now:
                due.append(v.version)
    return due


def too_old(key: Key, rules: Rules, now: datetime) -> bool:
    """A live key created more than max_key_age ago. Pure."""
    return (rules.max_age is not None and key.state in LIVE
            and key.created_at + rules.max_age <= now)


class Outcome(StrEnum):
    DONE = "done"          # executed (with or without an approval)
    PARKED = "parked"      # an approval was requested now
    WAITING = "waiting"    # an approval is pending, or was denied within its window
    FAILED = "failed"


class Service(Protocol):
    policy: Policy
    dual: DualControl

    def destroy_version(self, ctx: RequestContext, ref: str, version: int, *,
                        audit_action: str | None = None, reason: str = "") -> Key: ...
    def retire(self, ctx: RequestContext, key_id: str, due: Callable[[Key], bool]) -> Key: ...


class EndOfLife:
    def __init__(self, service: Service, ctx: RequestContext) -> None:
        self.service = service
        self.ctx = ctx

    def run(self, key: Key, now: datetime) -> list[tuple[str, Outcome]]:
        """Every end-of-life step due on ``key`` now: (what, outcome) each."""
        svc, rules = self.service, self.service.policy.rules_for(key)
        results = []
        if too_old(key, rules, now):
            def retire(ctx: RequestContext) -> None:
                svc.retire(ctx, key.id, lambda k: too_old(k, svc.policy.rules_for(k), now))
            results.append(("retire", self._gated(Action.KEY_DESTROY, key, {}, retire, now)))
            return results  # the whole key goes: purging its versions first is moot
        for version in purgeable(key, rules, now):
            def purge(ctx: RequestContext, version: int = version) -> None:
                svc.destroy_version(ctx, key.id, version, audit_action="scheduler.purge",
                                    reason="purge_after_days reached")
            results.append((f"purge v{version}", self._gated(
                Action.KEY_DESTROY_VERSION, key, {"version": version}, purge, now)))
        return results

    def _gated(self, action: Action, key: Key, args: dict[str, Any],
               call: Callable[[RequestContext], None], now: datetime) -> Outcome:
        """Run ``call`` as the scheduler, through dual control when the key's tags ask for it."""
        decision = decide(self.ctx.principal, action, key, self.service.policy, lambda: now)
        try:
            if decision.verdict is not Verdict.APPROVAL:
                call(self.ctx)
                return Outcome.DONE
            standing = self._standing(action, key, args, now, decision.expires_at or now)
            if standing is None:
                call(self.ctx)  # parks it: ApprovalRequired (recorded as approval.requested)
                return Outcome.DONE  # (only if the policy changed in between)
            if apv.effective_state(standing, now) is apv.ApprovalState.APPROVED:
                call(self.ctx._replace(approval_id=standing.id))
                return Outcome.DONE
            return Outcome.WAITING
        except ApprovalRequired:
            return Outcome.PARKED
        except FerroError as exc:
            log.warning("scheduled %s of key %s failed: %s", action.value, key.id, exc.message)
            return Outcome.FAILED

    def _standing(self, action: Action, key: Key, args: dict[str, Any], now: datetime,
                  window_end: datetime) -> apv.Approval | None:
        """The scheduler's approval of this exact request that still stands: open (pending or
        approved), or denied within the approval window (``window_end - now`` ago)."""
        store = self.service.dual.store
        if store is None:
            return None
        hold = window_end - now
        for state in (apv.ApprovalState.APPROVED, apv.ApprovalState.PENDING,
                      apv.ApprovalState.DENIED):
            after: str | None = None
            for _ in range(SCAN_PAGES):
                rows = store.list(state, now, SCAN_PAGE, after)
                for row in rows:
                    if (row.requester == self.ctx.actor and row.key_id == key.id
                            and apv.binds(row, action.value, key.id, args)
                            and (state is not apv.ApprovalState.DENIED
                                 or row.updated_at + hold > now)):
                        return row
                if len(rows) < SCAN_PAGE:
                    break
                after = rows[-1].id
        return None
