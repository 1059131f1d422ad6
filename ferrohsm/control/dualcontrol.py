"""Dual control: the policy gate every key operation passes, and the approval workflow.

The pure parts live elsewhere (``policy.decide`` answers allow/deny/approval; ``approvals`` is the
state table and request binding); this module only sequences them with the approval store and
the audit log, following the service's rule: change, then record, and undo the change when the
record cannot be made durable.

* ``gate`` runs after the role check and key lookup and before anything executes. Without
  ``X-Approval-ID`` a gated request creates a pending approval and raises ApprovalRequired (202).
  With it, the approval is consumed (approved -> executed) by compare-and-swap BEFORE the caller
  runs the operation, so of any number of concurrent repeats exactly one proceeds.
* ``decide`` records one approver's vote; ``expire_due`` and ``prune`` serve the scheduler.

Every transition leaves one audit record: approval.requested / approved / denied / expired /
executed. Refusals are recorded against the action that was refused.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

from ..auth.permissions import PERMISSIONS, Action, authorize, may_see
from ..domain import approval as apv
from ..domain.errors import (
    ApprovalRequired,
    AuditUnavailable,
    BadRequest,
    FerroError,
    Forbidden,
    InvalidTransition,
    NotFound,
    StaleRevision,
    Unavailable,
)
from ..domain.ids import uuid7
from ..domain.model import Key, RequestContext, iso
from ..store.approvalstore import ApprovalStore
from ..store.keystore import decode_page_token, encode_page_token
from .policy import Decision, Policy, Verdict, decide

log = logging.getLogger("ferrohsm.approvals")
CAS_RETRIES = 8


class Recorder(Protocol):
    """KeyService.record: one durable audit record (raises AuditUnavailable)."""

    def __call__(self, ctx: RequestContext, action: Action | str, outcome: str, message: str,
                 key: Key | None = None, version: int | None = None, **details: Any) -> None: ...


class DualControl:
    def __init__(self, store: ApprovalStore | None, policy: Policy, record: Recorder,
                 audit_healthy: Callable[[], bool], clock: Callable[[], datetime]) -> None:
        self.store = store  # None: nothing may need approval (gated actions then answer 503)
        self.policy = policy
        self.record = record
        self.audit_healthy = audit_healthy
        self.clock = clock

    # ---- helpers ----

    def _store(self) -> ApprovalStore:
        if self.store is None:
            raise Unavailable("this key is under dual control but no approval store is set up")
        return self.store

    def _require_audit(self) -> None:
        if not self.audit_healthy():
            raise AuditUnavailable("the audit log is unavailable; the operation was refused")

    def _refuse(self, ctx: RequestContext, action: Action | str, exc: FerroError,
                key_id: str | None = None) -> None:
        outcome = "denied" if isinstance(exc, Forbidden) else "error"
        self.record(ctx, action, outcome, exc.message, key_id=key_id)
        exc.audited = True

    def _authorize(self, ctx: RequestContext, action: Action) -> None:
        try:
            authorize(ctx.principal, action)
        except FerroError as exc:
            self._refuse(ctx, action, exc)
            raise

    def _find(self, approval_id: str, missing: type[FerroError] = NotFound) -> apv.Approval:
        try:
            return self._store().get(approval_id)
        except NotFound:
            raise missing(f"no approval {approval_id}") from None

    def _commit(self, ctx: RequestContext, old: apv.Approval, new: apv.Approval,
                audit_action: str, message: str) -> apv.Approval:
        """CAS old -> new, then its audit record; the swap is undone if the record fails.
        StaleRevision (somebody moved it first) propagates: callers re-read and judge again."""
        self._require_audit()
        store = self._store()
        saved = store.swap(new)
        try:
            self.record(ctx, audit_action, "success", message, key_id=new.key_id,
                        approval_id=new.id, approval_state=new.state.value,
                        approvals=len(new.approvers), required=new.required)
        except AuditUnavailable:
            try:
                store.swap(replace(old, revision=saved.revision))
            except Exception:
                log.critical("audit failed AND undo failed for approval %s", old.id)
            raise
        return saved

    # ---- the gate ----

    def gate(self, ctx: RequestContext, action: Action, key: Key, args: dict[str, Any]) -> None:
        """Return to let the operation run; raise to refuse it or park it for approval."""
        principal = ctx.principal
        if (principal is not None and principal.role in PERMISSIONS[action]
                and may_see(principal, key)
                and not self.policy.rules_for(key).needs_approval(action)):
            return  # decide() would ALLOW: skip its clock read and Decision (every crypto call)
        decision = decide(ctx.principal, action, key, self.policy, self.clock())
        if decision.verdict is Verdict.ALLOW:
            return
        if decision.verdict is Verdict.DENY:
            exc = Forbidden(decision.reason)
            self._refuse(ctx, action, exc, key.id)
            raise exc
        if ctx.approval_id is None:
            self._request(ctx, action, key, args, decision)
        self._redeem(ctx, action, key, args)

    def _request(self, ctx: RequestContext, action: Action, key: Key, args: dict[str, Any],
                 decision: Decision) -> None:
        """Park the request: a pending approval bound to it, then 202 (ApprovalRequired)."""
        now, required = self.clock(), decision.required
        try:
            store = self._store()
            self._require_audit()
            created = store.create(apv.new_approval(
                approval_id=uuid7(int(now.timestamp() * 1000)), action=action.value,
                key_id=key.id, args=args, salt=secrets.token_bytes(16), requester=ctx.actor,
                required=required, now=now, expires_at=decision.expires_at or now))
        except FerroError as exc:
            self._refuse(ctx, action, exc, key.id)
            raise
        try:
            self.record(ctx, "approval.requested", "success",
                        f"{action.value} needs {required} approval(s) ({created.summary})", key,
                        approval_id=created.id, request_hash=created.request_hash,
                        required=required, expires_at=iso(created.expires_at))
        except AuditUnavailable:
            store.delete(created.id)
            raise
        parked = ApprovalRequired(f"{action.value} on key {key.id} needs {required} approval(s); "
                                  f"repeat it with X-Approval-ID: {created.id} once approved",
                                  approval=apv.view(created, now))
        parked.audited = True  # "approval.requested" above is its record
        raise parked

    def _redeem(self, ctx: RequestContext, action: Action, key: Key,
                args: dict[str, Any]) -> None:
        """Consume the approval named by X-Approval-ID, or say why it cannot be used."""
        for _ in range(CAS_RETRIES):
            now, current = self.clock(), None
            try:
                current = self._find(str(ctx.approval_id), Forbidden)
                executed = apv.redeem(current, ctx.actor, action.value, key.id, args, now)
                self._commit(ctx, current, executed, "approval.executed",
                             f"approval consumed by {action.value} "
                             f"(approvers: {', '.join(current.approvers)})")
                return
            except StaleRevision:
                continue  # another repeat moved it first: re-read; it will be refused
            except apv.ApprovalPending:
                assert current is not None
                self.record(ctx, action, "denied", f"approval {current.id} is still pending", key)
                pending = ApprovalRequired(f"approval {current.id} has {len(current.approvers)} "
                                           f"of {current.required} approvals",
                                           approval=apv.view(current, now))
                pending.audited = True
                raise pending from None
            except FerroError as exc:
                if isinstance(exc, apv.ApprovalExpired) and current is not None:
                    self._expire(ctx, current, now)
                self._refuse(ctx, action, exc, key.id)
                raise
        raise StaleRevision("the approval kept changing underneath this request; try again")

    def _expire(self, ctx: RequestContext, approval: apv.Approval, now: datetime) -> bool:
        """Persist an expiry (audited); False when someone else moved it first."""
        try:
            self._commit(ctx, approval, apv.expire(approval, now), "approval.expired",
                         f"approval for {approval.action} expired unexecuted")
        except (StaleRevision, InvalidTransition):
            return False
        return True

    # ---- the approvals API ----

    def list(self, ctx: RequestContext, state: str | None, limit: int = 100,
             page_token: str | None = None) -> dict[str, Any]:
        self._authorize(ctx, Action.APPROVAL_LIST)
        try:
            wanted = apv.ApprovalState(state) if state else None
        except ValueError:
            raise BadRequest("state must be one of " + ", ".join(apv.ApprovalState)) from None
        now = self.clock()
        rows = self._store().list(wanted, now, limit + 1, decode_page_token(page_token))
        page = rows[:limit]
        self.record(ctx, Action.APPROVAL_LIST, "success", f"listed {len(page)} approvals")
        return {"approvals": [apv.view(a, now) for a in page],
                "next_page_token": encode_page_token(page[-1].id) if len(rows) > limit else None}

    def get(self, ctx: RequestContext, approval_id: str) -> dict[str, Any]:
        self._authorize(ctx, Action.APPROVAL_LIST)
        try:
            found = self._find(approval_id)
        except FerroError as exc:
            self._refuse(ctx, Action.APPROVAL_LIST, exc)
            raise
        self.record(ctx, "approval.read", "success", "described approval", key_id=found.key_id,
                    approval_id=found.id)
        return apv.view(found, self.clock())

    def decide(self, ctx: RequestContext, approval_id: str, approve: bool,
               comment: str = "") -> dict[str, Any]:
        """One approver's vote. The requester, a repeated approver, a finished or expired
        approval are refused (and audited)."""
        self._authorize(ctx, Action.APPROVAL_DECIDE)
        assert ctx.principal is not None  # authorize refuses anonymous callers
        verb = "approved" if approve else "denied"
        for _ in range(CAS_RETRIES):
            now, current = self.clock(), None
            try:
                current = self._find(approval_id)
                voted = apv.vote(current, ctx.principal, approve, now, comment)
                saved = self._commit(ctx, current, voted, f"approval.{verb}",
                                     f"{verb} {current.action} ({len(voted.approvers)} of "
                                     f"{current.required}){': ' + comment if comment else ''}")
                return apv.view(saved, now)
            except StaleRevision:
                continue
            except FerroError as exc:
                if isinstance(exc, apv.ApprovalExpired) and current is not None:
                    self._expire(ctx, current, now)
                self._refuse(ctx, Action.APPROVAL_DECIDE, exc,
                             current.key_id if current else None)
                raise
        raise StaleRevision("the approval kept changing underneath this request; try again")

    # ---- for the scheduler and attestations ----

    def expire_due(self, ctx: RequestContext, now: datetime) -> int:
        """Persist (and audit) every expiry that has happened."""
        if self.store is None:
            return 0
        return sum(self._expire(ctx, a, now) for a in self.store.expiring(now))

    def prune(self, ctx: RequestContext, finished_before: datetime) -> int:
        """Delete finished approvals last changed before the cutoff (--approval-retention-days)."""
        if self.store is None:
            return 0
        self._require_audit()
        count = self.store.prune(finished_before)
        if count:
            self.record(ctx, "scheduler.prune", "success", f"pruned {count} finished approvals "
                        f"last changed before {iso(finished_before)}", pruned=count)
        return count

    def latest_executed(self, key_id: str, action: Action) -> str | None:
        """The id of the approval that last authorized ``action`` on the key, if any."""
        if self.store is None:
            return None
        found = self.store.latest_executed(key_id, action.value)
        return found.id if found else None
