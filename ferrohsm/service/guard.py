"""The guarded call: the one place that records an operation's refusal.

Every operation of the service layer (key management, cryptography, approvals, token revocation,
audit reads) runs inside ``Guard.run`` (an operation on no particular key) or ``Guard.on_key`` (an
operation on the key a request names by id or name). The guard

1. authorizes once: the role table for ``run`` (``permissions.refusal``); for ``on_key``, once the
   key is resolved, THE policy decision (``policy.decide``: role, tag scoping, dual control), whose
   answer the operation hands to the dual-control gate instead of anything checking again;
2. runs the operation, whose last step records its allowed outcome (the message, key, version and
   details are the operation's own; a state change records its intent durably before it is
   applied, service/changes.py, so no change persists without its record);
3. records every refusal raised on the way, denied or failed (``FerroError.outcome``), exactly
   once, naming the key the request targeted (or, when nothing by that reference exists, the
   reference as given, sanitised and bounded), and re-raises it as ``recorded(exc)``.

The HTTP layer records only what never reached the service (authentication, routing, framing,
parsing, rate limits); a ``Recorded`` refusal tells it, by type, that there is nothing left to
record. The transitions of an approval (requested, executed, expired) are records of their own,
written by the dual-control gate (control/dualcontrol.py) through ``record``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar, overload

from ..audit.chain import AuditEvent
from ..audit.sinkbase import Ticket
from ..auth.permissions import Action, may_see, refusal
from ..control.policy import (
    ALLOWED,
    APPROVABLE,
    SYSTEM_APPROVABLE,
    Decision,
    Policy,
    Verdict,
    decide,
)
from ..domain.errors import (
    AuditUnavailable,
    BadRequest,
    FerroError,
    Forbidden,
    NotFound,
    Recorded,
    recorded,
)
from ..domain.model import Key, RequestContext
from ..store.keystore import KeyStore

T = TypeVar("T")
MISSING_KEY = "no such key"  # what every key store answers for a reference to no key
MAX_REF = 128  # characters of an unresolvable key reference kept in a refusal's record


class AuditLog(Protocol):
    @overload
    def append(self, event: AuditEvent, *, durable: Literal[True] = ...) -> dict[str, Any]: ...
    @overload
    def append(self, event: AuditEvent, *, durable: Literal[False]) -> Ticket: ...
    def healthy(self) -> bool: ...
    def fail_closed(self, reason: str) -> None: ...
    def fail_until_recorded(self, reason: str,
                            settle: AuditEvent | Callable[[], AuditEvent]) -> None: ...


class OutOfScope(NotFound):
    """A key outside a tag-scoped token's tags: answered exactly as a missing key (404, the same
    message), while its audit record (outcome denied) names the key and says why."""

    outcome = "denied"

    def __init__(self, key_id: str) -> None:
        super().__init__(MISSING_KEY, key_id=key_id)
        self.reason = f"this token's tags do not cover key {key_id}"


def audit_message(exc: FerroError) -> str:
    """What the record of the refusal ``exc`` says: its message, or for a hidden key, why."""
    return exc.reason if isinstance(exc, OutOfScope) else exc.message


def utcnow() -> datetime:
    return datetime.now(UTC)


def key_ref(ref: str) -> str:
    """A key reference as a caller gave it, fit for a record: printable and bounded."""
    return "".join(c if c.isprintable() else "?" for c in ref[:MAX_REF])


def no_approval_for(ctx: RequestContext, action: Action) -> None:
    """An X-Approval-ID on a call that can never be approved (a read, a listing, a plain
    create) is refused: else its id would be recorded as authorising a call it never covered
    (another request's, an executed one's), and nothing would check it."""
    if ctx.approval_id is not None and action not in APPROVABLE \
            and action not in SYSTEM_APPROVABLE:
        raise BadRequest(f"X-Approval-ID given, but {action} never needs an approval: send "
                         "it only when repeating the request that was parked")


class Guard:
    def __init__(self, audit: AuditLog, store: KeyStore, policy: Policy,
                 clock: Callable[[], datetime]) -> None:
        self.audit = audit
        self.store = store
        self.policy = policy
        self.clock = clock
        self.node: str | None = None  # this process among several sharing the store: named in
        # every intent, so a live node settles the intents of one that died (livesettle.py)

    def record(self, ctx: RequestContext, action: Action | str, outcome: str, message: str,
               key: Key | None = None, version: int | None = None, *,
               key_id: str | None = None, defer: bool = False,
               **details: Any) -> dict[str, Any] | Ticket:
        """Audit one decision: durable before this returns (the sealed record, whose seq and hash
        a change binds to), unless ``defer`` and the request carries a ticket list
        (``ctx.tickets``): then the record is only queued and its ticket, added to that list, is
        returned; the event-loop server answers the request once its tickets are durable,
        together with its neighbours' (api/dispatch.py), instead of one fsync per call.
        ``defer`` only where nothing changed state (refusals, crypto results): a ticket that
        fails can then only turn the answer into a 503."""
        event = self.event(ctx, action, outcome, message, key, version, key_id=key_id, **details)
        tickets = ctx.tickets
        if defer and tickets is not None:
            ticket = self.audit.append(event, durable=False)
            tickets.append(ticket)
            return ticket
        return self.audit.append(event)

    def require_audit(self) -> None:
        """Refuse a state change up front when its record could not be written (fail closed)."""
        if not self.audit.healthy():
            raise AuditUnavailable("the audit log is unavailable; the operation was refused")

    def fail_closed(self, reason: str) -> None:
        """Refuse every further record until a restart (control/recordfirst.py)."""
        self.audit.fail_closed(reason)

    def event(self, ctx: RequestContext, action: Action | str, outcome: str, message: str,
              key: Key | None = None, version: int | None = None, *,
              key_id: str | None = None, **details: Any) -> AuditEvent:
        """The record ``record`` would write, made and not written."""
        return AuditEvent.from_context(ctx, str(action), outcome, message,
                                       key_id=key.id if key else key_id, key_version=version,
                                       details=details)

    def fail_until_recorded(self, reason: str,
                            settle: AuditEvent | Callable[[], AuditEvent]) -> None:
        """Refuse every further record until the settling record that could not be written
        (or the one ``settle`` makes once the store can tell) is (control/recordfirst.py)."""
        self.audit.fail_until_recorded(reason, settle)

    def refused(self, ctx: RequestContext, action: Action | str, exc: FerroError,
                key: Key | None = None, ref: str | None = None,
                key_id: str | None = None) -> FerroError:
        """Record the refusal ``exc`` of ``action`` (once) and return it marked Recorded."""
        if isinstance(exc, Recorded):
            return exc  # e.g. a parked approval: its "approval.requested" record is the one
        if key is None and key_id is None and isinstance(exc.details.get("key_id"), str):
            key_id = str(exc.details["key_id"])  # e.g. a record that failed its MAC: name it
        details: dict[str, Any] = {"key_ref": key_ref(ref)} \
            if key is None and key_id is None and ref else {}
        version = exc.details.get("key_version")  # e.g. the one a refused ciphertext names
        try:
            self.record(ctx, action, exc.outcome, audit_message(exc), key,
                        version if isinstance(version, int) else None, key_id=key_id,
                        defer=True, **details)
        except AuditUnavailable:
            if not isinstance(exc, AuditUnavailable):
                raise
            # the refusal's own cause: the log refuses records. Its message says what became
            # of the change (control/recordfirst.py), more than "the log is down" would.
        return recorded(exc)

    def refuse_role(self, ctx: RequestContext, action: Action, ref: str | None) -> FerroError:
        """The recorded 403 of a role that may never perform ``action`` (api/application.py
        asks before a body is read): the record names the key ``ref`` resolves to, as a
        refusal after parsing would; a key that does not resolve, as named."""
        key = None
        if ref is not None:
            try:
                key = self.store.resolve(ref)
            except FerroError:
                pass
        reason = refusal(ctx.principal, action) or f"{action.value} is not allowed"
        return self.refused(ctx, action, Forbidden(reason), key, ref)

    def run(self, ctx: RequestContext, action: Action, work: Callable[[], T], *,
            key_of: Callable[[], str | None] | None = None) -> T:
        """Role check, then ``work``. ``key_of`` names the key a refusal concerns (e.g. the one an
        approval is bound to); it is asked only when there is a refusal and must not raise."""
        try:
            reason = refusal(ctx.principal, action)
            if reason is not None:
                raise Forbidden(reason)
            no_approval_for(ctx, action)
            return work()
        except FerroError as exc:
            raise self.refused(ctx, action, exc, key_id=key_of() if key_of else None) from None

    def on_key(self, ctx: RequestContext, action: Action, ref: str,
               work: Callable[[Key, Decision], T], *, audit_action: str | None = None,
               authorize: bool = True) -> T:
        """Resolve ``ref``, decide once, then ``work(key, decision)``: a decision other than
        ALLOWED is an APPROVAL, the dual-control gate's to act on. ``authorize=False`` for the
        scheduler's own moves, which no role or approval governs; ``audit_action`` names those
        in the records."""
        key = None
        try:
            key, decision = self.admit(ctx, action, ref, authorize)
            return work(key, decision)
        except FerroError as exc:
            raise self.refused(ctx, audit_action or action, exc, key, ref) from None

    def admit(self, ctx: RequestContext, action: Action, ref: str,
              authorize: bool = True) -> tuple[Key, Decision]:
        """The key ``ref`` names and THE policy decision on it, or the refusal (not recorded:
        the caller records it, once per call here, once per group of batch items in
        service/batch.py). A refusal after the key was found names it (``details["key_id"]``)."""
        key = self._resolve(ctx, action, ref, authorize)
        if not authorize:
            return key, ALLOWED
        self._hide_out_of_scope(ctx, action, key)  # first: any other answer tells it exists
        no_approval_for(ctx, action)
        decision = decide(ctx.principal, action, key, self.policy, self.clock)
        if decision is not ALLOWED and decision.verdict is Verdict.DENY:
            raise Forbidden(decision.reason, key_id=key.id)
        if decision is ALLOWED and ctx.approval_id is not None:
            # An approval named for a call that needs none is still checked and consumed by
            # the gate: else its id would be recorded as authorising a call it never covered
            # (another key's, an executed one's).
            return key, Decision(Verdict.APPROVAL, "an approval id was given")
        return key, decision

    def _hide_out_of_scope(self, ctx: RequestContext, action: Action, key: Key) -> None:
        """A key outside a tag-scoped token's tags does not exist for that token: the answer is
        the one for a missing key (404, same message), by name or by id, so a name cannot be
        probed; the record names the key and the reason, for auditors. (A role that may not
        perform ``action`` at all hears its 403 either way, as ``_resolve`` says.)"""
        principal = ctx.principal
        if principal is not None and not may_see(principal, key) \
                and refusal(principal, action) is None:
            raise OutOfScope(key.id)

    def _resolve(self, ctx: RequestContext, action: Action, ref: str, authorize: bool) -> Key:
        """The key ``ref`` names. A role that may not perform ``action`` at all hears 403 whether
        or not the key exists: only callers who may ask learn that a key does not exist."""
        try:
            return self.store.resolve(ref)
        except FerroError:
            reason = refusal(ctx.principal, action) if authorize else None
            if reason is not None:
                raise Forbidden(reason) from None
            raise
