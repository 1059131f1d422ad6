"""Dual control: the gate an operation under a quorum passes, and the approval workflow.

The pure parts live elsewhere (``policy.decide`` answers allow/deny/approval, once per call, in
the service's guarded call; ``approvals`` is the state table and request binding); this module
only sequences them with the approval store and the audit log, following the service's rule:
change, then record, and undo the change when the record cannot be made durable.

* ``gate`` acts on an APPROVAL decision, after the key lookup and before anything executes.
  Without ``X-Approval-ID`` a gated request creates a pending approval and raises ApprovalRequired
  (202). With it, the approval is consumed (approved -> executed) by compare-and-swap BEFORE the
  caller runs the operation, so of any number of concurrent repeats exactly one proceeds.
* ``vote`` records one approver's vote; ``expire_due`` and ``prune`` serve the scheduler.

Every transition leaves one audit record: approval.requested / approved / denied / expired /
executed. A refusal is not recorded here: the service's guarded call records it, once, against
the action that was refused. The one refusal that IS a transition, a request parked for approval,
is raised as ``recorded(...)``: its "approval.requested" record is the request's record.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

from ..auth.permissions import Action
from ..domain import approval as apv
from ..domain.errors import (
    CAS_RETRIES,
    ApprovalRequired,
    AuditUnavailable,
    BadRequest,
    FerroError,
    Forbidden,
    InvalidTransition,
    NotFound,
    StaleRevision,
    Unavailable,
    recorded,
)
from ..domain.ids import uuid7
from ..domain.model import Key, Principal, RequestContext, iso
from ..store.approvalstore import ApprovalStore
from ..store.keystore import decode_page_token, encode_page_token
from .policy import Decision

log = logging.getLogger("ferrohsm.approvals")


class Recorder(Protocol):
    """The service's guard (service/guard.py): durable records, and the fail-closed check."""

    def record(self, ctx: RequestContext, action: Action | str, outcome: str, message: str,
               key: Key | None = None, version: int | None = None, *,
               key_id: str | None = None, defer: bool = False, **details: Any) -> object: ...

    def require_audit(self) -> None: ...


class DualControl:
    def __init__(self, store: ApprovalStore | None, recorder: Recorder,
                 clock: Callable[[], datetime]) -> None:
        self.store = store  # None: nothing may need approval (gated actions then answer 503)
        self.recorder = recorder
        self.clock = clock

    # ---- helpers ----

    def _store(self) -> ApprovalStore:
        if self.store is None:
            raise Unavailable("this key is under dual control but no approval store is set up")
        return self.store

    def _find(self, approval_id: str, missing: type[FerroError] = NotFound) -> apv.Approval:
        try:
            return self._store().get(approval_id)
        except NotFound:
            raise missing(f"no approval {approval_id}") from None

    def _commit(self, ctx: RequestContext, old: apv.Approval, new: apv.Approval,
                audit_action: str, message: str) -> apv.Approval:
        """CAS old -> new, then its audit record; the swap is undone if the record fails.
        StaleRevision (somebody moved it first) propagates: callers re-read and judge again."""
        self.recorder.require_audit()
        store = self._store()
        saved = store.swap(new)
        try:
            self.recorder.record(ctx, audit_action, "success", message, key_id=new.key_id,
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

    def gate(self, ctx: RequestContext, action: Action, key: Key, args: dict[str, Any],
             decision: Decision) -> None:
        """For an APPROVAL decision: return to let the operation run (its approval consumed),
        or raise to park it for approval or refuse it."""
        if ctx.approval_id is None:
            self._request(ctx, action, key, args, decision)
        self._redeem(ctx, action, key, args)

    def _request(self, ctx: RequestContext, action: Action, key: Key, args: dict[str, Any],
                 decision: Decision) -> None:
        """Park the request: a pending approval bound to it, then 202 (ApprovalRequired)."""
        now, required = self.clock(), decision.required
        store = self._store()
        self.recorder.require_audit()
        created = store.create(apv.new_approval(
            approval_id=uuid7(int(now.timestamp() * 1000)), action=action.value,
            key_id=key.id, args=args, salt=secrets.token_bytes(16), requester=ctx.actor,
            required=required, now=now, expires_at=decision.expires_at or now))
        try:
            self.recorder.record(ctx, "approval.requested", "success",
                                 f"{action.value} needs {required} approval(s) "
                                 f"({created.summary})", key, approval_id=created.id,
                                 request_hash=created.request_hash, required=required,
                                 expires_at=iso(created.expires_at))
        except AuditUnavailable:
            store.delete(created.id)
            raise
        raise recorded(ApprovalRequired(
            f"{action.value} on key {key.id} needs {required} approval(s); repeat it with "
            f"X-Approval-ID: {created.id} once approved", approval=apv.view(created, now)))

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
                raise ApprovalRequired(f"approval {current.id} has {len(current.approvers)} "
                                       f"of {current.required} approvals",
                                       approval=apv.view(current, now)) from None
            except apv.ApprovalExpired:
                if current is not None:
                    self._expire(ctx, current, now)
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

    # ---- the approvals API (run by service/approvals.py inside the guarded call) ----

    def page(self, state: str | None, limit: int, page_token: str | None,
             now: datetime) -> tuple[Sequence[apv.Approval], str | None]:
        """One page of approvals (in ``state``, when given) and the token of the next."""
        try:
            wanted = apv.ApprovalState(state) if state else None
        except ValueError:
            raise BadRequest("state must be one of " + ", ".join(apv.ApprovalState)) from None
        rows = self._store().list(wanted, now, limit + 1, decode_page_token(page_token))
        page = rows[:limit]
        return page, encode_page_token(page[-1].id) if len(rows) > limit else None

    def find(self, approval_id: str) -> apv.Approval:
        return self._find(approval_id)

    def key_of(self, approval_id: str) -> str | None:
        """The key an approval is bound to, for the record of a refusal that concerns it; None
        when there is no such approval (or it cannot be read)."""
        try:
            return self._find(approval_id).key_id
        except FerroError:
            return None

    def vote(self, ctx: RequestContext, voter: Principal, approval_id: str, approve: bool,
             comment: str = "") -> dict[str, Any]:
        """One approver's vote, recorded as approval.approved / approval.denied. The requester, a
        repeated approver, a finished or expired approval are refused (an expiry persisted)."""
        verb = "approved" if approve else "denied"
        for _ in range(CAS_RETRIES):
            now, current = self.clock(), None
            try:
                current = self._find(approval_id)
                voted = apv.vote(current, voter, approve, now, comment)
                saved = self._commit(ctx, current, voted, f"approval.{verb}",
                                     f"{verb} {current.action} ({len(voted.approvers)} of "
                                     f"{current.required}){': ' + comment if comment else ''}")
                return apv.view(saved, now)
            except StaleRevision:
                continue
            except apv.ApprovalExpired:
                if current is not None:
                    self._expire(ctx, current, now)
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
        self.recorder.require_audit()
        count = self.store.prune(finished_before)
        if count:
            self.recorder.record(ctx, "scheduler.prune", "success",
                                 f"pruned {count} finished approvals last changed before "
                                 f"{iso(finished_before)}", pruned=count)
        return count

    def latest_executed(self, key_id: str, action: Action) -> str | None:
        """The id of the approval that last authorized ``action`` on the key, if any."""
        if self.store is None:
            return None
        found = self.store.latest_executed(key_id, action.value)
        return found.id if found else None
