"""Dual control: the gate an operation under a quorum passes, and the approval workflow.

The pure parts live elsewhere (``policy.decide`` answers allow/deny/approval, once per call, in
the service's guarded call; ``approvals`` is the state table and request binding); this module
only sequences them with the approval store and the audit log, following the service's rule:
record the intent, change, then confirm (control/recordfirst.py), so no transition is stored
without its record and none needs undoing when the audit log is down.

* ``gate`` acts on an APPROVAL decision, after the key lookup and before anything executes.
  Without ``X-Approval-ID`` a gated request creates a pending approval and raises ApprovalRequired
  (202). With it, the approval is consumed (approved -> executed) by compare-and-swap BEFORE the
  caller runs the operation, so of any number of concurrent repeats exactly one proceeds.
* ``vote`` records one approver's vote; ``expire_due`` and ``prune`` serve the scheduler.

Every transition leaves its audit records: approval.requested / approved / denied / expired /
executed, each an intent and then its success (or rolled_back, when another writer moved the
approval first or the store refused). A refusal is not recorded here: the service's guarded call
records it, once, against the action that was refused. The one refusal that IS a transition, a
request parked for approval, is raised as ``recorded(...)``: its "approval.requested" records are
the request's records.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, NoReturn

from ..auth.permissions import Action
from ..domain import approval as apv
from ..domain.errors import (
    CAS_RETRIES,
    ApprovalRequired,
    BadRequest,
    Conflict,
    FerroError,
    Forbidden,
    IntegrityError,
    InvalidTransition,
    NotFound,
    StaleRevision,
    Unavailable,
    recorded,
)
from ..domain.ids import uuid7_at
from ..domain.model import SYSTEM_CONTEXT, Key, Principal, RequestContext, iso
from ..store.approvalstore import ApprovalStore
from ..store.keystore import decode_page_token, encode_page_token
from .policy import Decision, Verdict
from .recordfirst import Intent, Recorder, Steps
from .voting import SignedVote

# How far a parked request looks for its own earlier, still open approval (open approvals are
# a short queue; past this many the request is parked anew rather than scanned for longer).
OPEN_SCAN_PAGE = 500
OPEN_SCAN_PAGES = 20
# Open approvals one requester may hold: past it a new request is refused (409), so one
# compromised or looping identity cannot bury the approvers' queue (a soft cap: requests
# parked at the same instant on several nodes may pass it by a few).
MAX_OPEN_PER_REQUESTER = 100
MAX_NEWEST = 1_000_000  # approvals whose newest revision a process remembers (_find)
# The target of an approval of a system action (a master-key rekey): never a key id, which is
# always a lowercase UUID, so listing, voting and redeeming treat it like any other approval.
SYSTEM_TARGET = "system"
Target = Key | str  # a key, or SYSTEM_TARGET


def _twin(row: apv.Approval, requester: str, action: Action, key_id: str,
          args: dict[str, Any]) -> bool:
    """Whether ``row`` parks this very request: same requester, action, key and arguments
    (the request hash under the row's own salt)."""
    return (row.requester == requester and row.action == action.value
            and row.key_id == key_id and apv.binds(row, action.value, key_id, args))


def _target_id(target: Target) -> str:
    return target if isinstance(target, str) else target.id


def _target_key(target: Target) -> Key | None:
    return None if isinstance(target, str) else target


class DualControl:
    def __init__(self, store: ApprovalStore | None, recorder: Recorder,
                 clock: Callable[[], datetime]) -> None:
        self.store = store  # None: nothing may need approval (gated actions then answer 503)
        self.recorder = recorder
        self.steps = Steps(recorder)
        self.clock = clock
        self._newest: dict[str, int] = {}  # approval id -> the newest revision seen

    def seen(self, revisions: Mapping[str, int]) -> None:
        """Revisions the audit log confirms (a cold start's reading of it): an approval's record
        older than these is an older copy put back (``_find``)."""
        for approval_id, revision in revisions.items():
            self._note(approval_id, revision)

    # ---- helpers ----

    def _note(self, approval_id: str, revision: int) -> None:
        if revision > self._newest.get(approval_id, 0):
            if len(self._newest) >= MAX_NEWEST:
                del self._newest[next(iter(self._newest))]
            self._newest[approval_id] = revision

    def is_current(self, approval: apv.Approval) -> bool:
        """Whether ``approval`` is not an older copy of its record (``_find`` refuses one):
        listings and backups leave such a copy out, or an executed approval put back would
        show as approved, and a restore would make it redeemable again."""
        return approval.revision >= self._newest.get(approval.id, 0)

    def _store(self) -> ApprovalStore:
        if self.store is None:
            raise Unavailable("this key is under dual control but no approval store is set up")
        return self.store

    def _find(self, approval_id: str, missing: type[FerroError] = NotFound) -> apv.Approval:
        """The approval, never an older copy of its record: its MAC is good (it was authentic
        once), but an executed approval put back as approved would execute again."""
        try:
            found = self._store().get(approval_id)
            newest = self._newest.get(approval_id, 0)
            if found.revision < newest:
                found = self._store().get(approval_id)  # a read that raced a change: again
        except NotFound:
            raise missing(f"no approval {approval_id}") from None
        if found.revision < newest:
            raise IntegrityError(f"approval {approval_id}: its stored record failed its "
                                 f"integrity check (it is an older copy: revision "
                                 f"{found.revision}, but revision {newest} was recorded; put "
                                 "back, or a write the store lost)", problem="older_copy")
        self._note(approval_id, found.revision)
        return found

    def _commit(self, ctx: RequestContext, old: apv.Approval, new: apv.Approval,
                audit_action: str, message: str,
                extra: dict[str, Any] | None = None) -> apv.Approval:
        """Record the intent, compare-and-swap old -> new, confirm. StaleRevision (somebody
        moved it first) is recorded as rolled back and propagates: callers re-read and judge
        again. ``extra``: more details for both records (a signed vote's proof)."""
        store = self._store()
        self.recorder.require_audit()
        details: dict[str, Any] = {"approval_id": new.id, "approval_state": new.state.value,
                                   "approvals": len(new.approvers), "required": new.required,
                                   **(extra or {})}
        intent = self.steps.intend(ctx, audit_action, message, key_id=new.key_id,
                                   target_revision=old.revision + 1, **details)
        new = replace(new, change_seq=intent.seq)  # which of concurrent intents was stored
        target = replace(new, revision=old.revision + 1)
        try:
            saved = store.swap(new)
        except FerroError as exc:
            self._settle(ctx, audit_action, message, target, intent, exc, details)
        self.steps.confirm(ctx, audit_action, message, intent, key_id=new.key_id, **details)
        self._note(saved.id, saved.revision)
        return saved

    def _outcome(self, ctx: RequestContext, audit_action: str, message: str,
                 target: apv.Approval, intent: Intent, exc: FerroError,
                 details: dict[str, Any]) -> Any:
        """The settling record of a write whose outcome the store could not tell, once it can
        (read back again by the audit sink, every second: control/recordfirst.py)."""
        try:
            applied = self._store().get(target.id) == target
        except NotFound:
            applied = False
        if applied:
            return self.steps.success(ctx, audit_action, f"{message} (applied, found once the "
                                      f"store could be read again; it had reported: "
                                      f"{exc.message})", intent, key_id=target.key_id, **details)
        return self.steps.rolled_back(ctx, audit_action, f"not applied (found once the store "
                                      f"could be read again): {exc.message}", intent,
                                      target.key_id, approval_id=target.id)

    def _settle(self, ctx: RequestContext, audit_action: str, message: str,
                target: apv.Approval, intent: Intent, exc: FerroError,
                details: dict[str, Any]) -> NoReturn:
        """The store raised: record whether the write happened anyway (read back), then
        re-raise."""
        applied = False
        if not isinstance(exc, StaleRevision):
            try:
                applied = self._store().get(target.id) == target
            except NotFound:
                pass
            except FerroError as again:
                self.steps.unknown(f"approval {target.id}", intent, f"the store failed "
                                   f"({exc.message}) and cannot be read back ({again.message})",
                                   lambda: self._outcome(ctx, audit_action, message, target,
                                                         intent, exc, details))
                raise exc from None
        if applied:
            self.steps.confirm(ctx, audit_action, f"{message} (applied, although the store "
                               f"reported: {exc.message})", intent, key_id=target.key_id,
                               **details)
        else:
            self.steps.roll_back(ctx, audit_action, f"not applied: {exc.message}", intent,
                                 target.key_id, approval_id=target.id)
        raise exc

    # ---- the gate ----

    def gate(self, ctx: RequestContext, action: Action, key: Target, args: dict[str, Any],
             decision: Decision) -> None:
        """For an APPROVAL decision: return to let the operation run (its approval consumed),
        or raise to park it for approval or refuse it. ``key`` is SYSTEM_TARGET for a system
        action (``gate_system``)."""
        if ctx.approval_id is None:
            self._request(ctx, action, key, args, decision)
        self._redeem(ctx, action, key, args)

    def gate_system(self, ctx: RequestContext, action: Action, args: dict[str, Any],
                    required: int, ttl: timedelta) -> None:
        """``gate`` for an action on no key (a master-key rekey): the quorum comes from the
        configuration, the approval targets SYSTEM_TARGET."""
        decision = Decision(Verdict.APPROVAL, f"{action.value} needs {required} approval(s)",
                            required, self.clock() + ttl)
        self.gate(ctx, action, SYSTEM_TARGET, args, decision)

    def _request(self, ctx: RequestContext, action: Action, key: Target, args: dict[str, Any],
                 decision: Decision) -> None:
        """Park the request: a pending approval bound to it, then 202 (ApprovalRequired). The
        same request repeated by the same requester while its approval is still open gets that
        approval again instead of a second one (approvers would otherwise vote on duplicates,
        and the requester lose track of which id to repeat with)."""
        now, required, key_id = self.clock(), decision.required, _target_id(key)
        store = self._store()
        existing, held = self._open_for(store, ctx.actor, action, key_id, args, now)
        if existing is None and held >= MAX_OPEN_PER_REQUESTER \
                and ctx.actor != SYSTEM_CONTEXT.actor:  # the scheduler parks one per due key
            raise Conflict(f"{ctx.actor} already has {held} open approval requests, the most "
                           "one requester may have: repeat one that is approved, or wait until "
                           "some are decided or expire")
        if existing is not None:
            raise ApprovalRequired(
                f"{action.value} on key {key_id} is already parked as approval {existing.id} "
                f"({len(existing.approvers)} of {existing.required} approvals); repeat it with "
                f"X-Approval-ID: {existing.id} once approved", approval=apv.view(existing, now))
        self.recorder.require_audit()
        target = replace(apv.new_approval(
            approval_id=uuid7_at(now), action=action.value,
            key_id=key_id, args=args, salt=secrets.token_bytes(16), requester=ctx.actor,
            required=required, now=now, expires_at=decision.expires_at or now), revision=1)
        summary = f" ({target.summary})" if target.summary else ""
        message = f"{action.value} needs {required} approval(s){summary}"
        details: dict[str, Any] = {"approval_id": target.id,
                                   "request_hash": target.request_hash, "required": required,
                                   "expires_at": iso(target.expires_at)}
        intent = self.steps.intend(ctx, "approval.requested", message, key_id=key_id,
                                   approval_state=target.state.value, target_revision=1,
                                   **details)
        target = replace(target, change_seq=intent.seq)
        try:  # atomic: of identical requests parked at once, one approval (the first)
            created = store.create_once(target, now, lambda row: _twin(row, ctx.actor, action,
                                                                          key_id, args))
        except FerroError as exc:
            self._settle(ctx, "approval.requested", message, target, intent, exc, details)
        if created.id != target.id:
            self.steps.roll_back(ctx, "approval.requested", f"not applied: the same request "
                                 f"was parked meanwhile as approval {created.id}", intent,
                                 key_id, approval_id=target.id)
            raise ApprovalRequired(
                f"{action.value} on key {key_id} is already parked as approval {created.id} "
                f"({len(created.approvers)} of {created.required} approvals); repeat it with "
                f"X-Approval-ID: {created.id} once approved", approval=apv.view(created, now))
        self.steps.confirm(ctx, "approval.requested", message, intent, _target_key(key),
                           key_id=None if isinstance(key, Key) else key_id, **details)
        raise recorded(ApprovalRequired(
            f"{action.value} on key {key_id} needs {required} approval(s); repeat it with "
            f"X-Approval-ID: {created.id} once approved", approval=apv.view(created, now)))

    def _open_for(self, store: ApprovalStore, requester: str, action: Action, key_id: str,
                  args: dict[str, Any], now: datetime) -> tuple[apv.Approval | None, int]:
        """An open (pending or approved, not expired) approval of this exact request by this
        requester (same action, key and request hash under the approval's own salt), and
        how many open approvals of this requester were seen before it was found."""
        held = 0
        for row in self._open_rows(store, now):
            if _twin(row, requester, action, key_id, args):
                return row, held
            held += row.requester == requester
        return None, held

    def _open_rows(self, store: ApprovalStore, now: datetime) -> Iterator[apv.Approval]:
        """The current open approvals (pending, then approved; not expired), page by page,
        at most OPEN_SCAN_PAGES pages of each state."""
        for state in (apv.ApprovalState.PENDING, apv.ApprovalState.APPROVED):
            after: str | None = None
            for _ in range(OPEN_SCAN_PAGES):
                rows = store.list(state, now, OPEN_SCAN_PAGE, after)
                yield from filter(self.is_current, rows)
                if not rows:  # not a short page: records that fail their check are left out
                    break
                after = rows[-1].id

    def _redeem(self, ctx: RequestContext, action: Action, key: Target,
                args: dict[str, Any]) -> None:
        """Consume the approval named by X-Approval-ID, or say why it cannot be used."""
        for _ in range(CAS_RETRIES):
            now, current = self.clock(), None
            try:
                current = self._find(str(ctx.approval_id), Forbidden)
                executed = apv.redeem(current, ctx.actor, action.value, _target_id(key), args,
                                      now)
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
            wanted = apv.ApprovalState(state) if state is not None else None
        except ValueError:
            raise BadRequest("state must be one of " + ", ".join(apv.ApprovalState)) from None
        rows = self._store().list(wanted, now, limit + 1, decode_page_token(page_token))
        page = rows[:limit]
        token = encode_page_token(page[-1].id) if len(rows) > limit else None
        return [row for row in page if self.is_current(row)], token

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
             comment: str = "", signed: Callable[[apv.Approval], SignedVote | None]
             = lambda approval: None) -> dict[str, Any]:
        """One approver's vote, recorded as approval.approved / approval.denied. The requester, a
        repeated approver, a finished or expired approval are refused (an expiry persisted).
        ``signed`` checks the vote's signature against the approval as read (control/voting.py)
        before the vote counts; its proof goes into the approval and both audit records."""
        verb = "approved" if approve else "denied"
        for _ in range(CAS_RETRIES):
            now, current = self.clock(), None
            try:
                current = self._find(approval_id)
                # who may vote first (the requester, a second vote, a finished approval), then
                # whether the vote is signed: "must be signed" told the requester nothing
                apv.vote(current, voter, approve, now, comment)
                proof = signed(current)
                voted = apv.vote(current, voter, approve, now, comment,
                                 proof.signature if proof else "",
                                 proof.key_fingerprint if proof else "")
                extra = {"request_hash": current.request_hash, **(proof.details() if proof
                                                                    else {})}
                saved = self._commit(ctx, current, voted, f"approval.{verb}",
                                     f"{verb} {current.action} ({len(voted.approvers)} of "
                                     f"{current.required}){': ' + comment if comment else ''}",
                                     extra)
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

    def open_on(self, key_id: str, action: Action, now: datetime) -> bool:
        """Whether an approval of ``action`` on the key is open (pending or approved, not
        expired): the scheduler holds a key's destruction while its cancellation waits for
        approvers, who were otherwise asked to approve what the destruction made void."""
        return self.store is not None and any(
            row.key_id == key_id and row.action == action.value
            for row in self._open_rows(self.store, now))

    def latest_executed(self, key_id: str, action: Action) -> str | None:
        """The id of the approval that last authorized ``action`` on the key, if any."""
        if self.store is None:
            return None
        found = self.store.latest_executed(key_id, action.value)
        return found.id if found else None
