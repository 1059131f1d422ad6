"""Dual-control approvals: the state machine as a table, and request hashing. Pure.

Theory of operation
-------------------
A request that needs a quorum is not executed; an ``Approval`` is created, bound to the exact
request by ``request_hash`` = SHA-256 over a domain tag, a random per-approval salt and the
canonical JSON of (action, key id, arguments). The salt keeps a hash shown to approvers and
auditors from confirming a guessed plaintext (sign/encrypt arguments); the approval stores the salt,
never the arguments.

Distinct Administrators or Operators other than the requester vote; one approver counts once; a
single deny refuses the request. When the requester repeats the request with ``X-Approval-ID``,
``redeem`` checks the binding (same requester, action, key and arguments), the state and the
window, and returns the EXECUTED copy; the service persists it with compare-and-swap BEFORE running
the operation, so of N concurrent repeats exactly one wins. The approval authorizes one attempt:
if the operation then fails, it stays executed (the audit log has both records).

States and moves (anything not in TRANSITIONS raises and changes nothing)::

    pending --approve--> pending        a vote short of the quorum
    pending --quorum---> approved       the vote that completes it
    pending|approved --deny---> denied
    pending|approved --expire-> expired  the window (approval_ttl_seconds) closed unexecuted
    approved --execute--> executed

Expiry is also computed on read (``effective_state``): an approval past ``expires_at`` is expired
whether or not the scheduler has persisted that yet.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from .errors import Conflict, Forbidden, InvalidTransition
from .model import Principal, Role, iso, parse_iso
from .subjects import same_person

HASH_DOMAIN = b"ferrohsm-approval-v1\x00"
APPROVER_ROLES = frozenset({Role.ADMINISTRATOR, Role.OPERATOR})
MAX_COMMENT = 256


class ApprovalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    EXECUTED = "executed"


class Event(StrEnum):
    APPROVE = "approve"
    QUORUM = "quorum"
    DENY = "deny"
    EXPIRE = "expire"
    EXECUTE = "execute"


P, A = ApprovalState.PENDING, ApprovalState.APPROVED
TRANSITIONS: dict[tuple[ApprovalState, Event], ApprovalState] = {
    (P, Event.APPROVE): P,
    (P, Event.QUORUM): A,
    (P, Event.DENY): ApprovalState.DENIED,
    (A, Event.DENY): ApprovalState.DENIED,
    (P, Event.EXPIRE): ApprovalState.EXPIRED,
    (A, Event.EXPIRE): ApprovalState.EXPIRED,
    (A, Event.EXECUTE): ApprovalState.EXECUTED,
}
OPEN = frozenset({P, A})
FINISHED = frozenset(ApprovalState) - OPEN


class ApprovalPending(Conflict):
    """The quorum is not reached yet; the service answers 202 with the approval again."""


class ApprovalExpired(Conflict):
    """The window closed; the service persists the expiry before refusing."""


@dataclass(frozen=True, slots=True)
class Vote:
    approver: str
    role: str
    approve: bool
    at: datetime
    comment: str = ""
    # A signed vote (domain/votes.py): base64 signature over vote_message, and the fingerprint
    # of the registered key that verified it. Empty for an unsigned vote.
    signature: str = ""
    key_fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class Approval:
    id: str
    action: str
    key_id: str
    request_hash: str
    salt: str  # hex; binds the hash to this approval (see module docstring)
    requester: str
    required: int
    state: ApprovalState
    created_at: datetime
    expires_at: datetime
    updated_at: datetime
    votes: tuple[Vote, ...] = ()
    summary: str = ""
    executed_at: datetime | None = None
    revision: int = 0  # bumped by the store on every write (compare-and-swap)
    # The audit seq of the intent record whose change this revision is (control/dualcontrol.py):
    # of several concurrent intents for one revision, only one was stored, and start-up
    # reconciliation tells which after a crash (integrity/reconcile.py). 0: stored before this.
    change_seq: int = 0

    @property
    def approvers(self) -> tuple[str, ...]:
        return tuple(v.approver for v in self.votes if v.approve)


# ---- request binding ------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """JSON-able form of service arguments; bytes become {"b64": ...} so they cannot collide
    with a string argument."""
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot bind an argument of type {type(value).__name__}")


def canonical_request(action: str, key_id: str, args: dict[str, Any]) -> bytes:
    """Sorted, compact, ASCII JSON: equal requests give equal bytes whatever their field order."""
    doc = {"action": action, "key_id": key_id, "args": _plain(args)}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def request_hash(action: str, key_id: str, args: dict[str, Any], salt: bytes) -> str:
    return hashlib.sha256(HASH_DOMAIN + salt + canonical_request(action, key_id, args)).hexdigest()


# Characters of a reason's or description's repr an approver sees: all of them for any text the
# API takes (at most 1,024 characters, each at most 10 in Python's repr: "\U0010fffe"). A cut
# at 1,024 characters of the repr let 500 tabs (two characters each) hide the end of a
# 578-character description from the approvers (an outside tester).
SHOWN_TEXT = 10_250
MAX_DIGEST = 64  # a signed digest is shown in hex (SHA-512's is the longest): not a secret


def summarize(args: dict[str, Any]) -> str:
    """What approvers see of the arguments: scalars, and reasons and descriptions in full (a
    description cut at 64 characters, its closing quote kept, let a requester hide the part
    that mattered from the approver); a digest to be signed or verified in hex, so the
    approver can tell which artefact it is; sizes of other data, never the data. Anything
    shortened says so."""
    parts = []
    for name in sorted(args):
        value = args[name]
        if value is None:
            continue
        if isinstance(value, (bytes, bytearray)) and name == "data" and args.get("prehashed") \
                and len(value) <= MAX_DIGEST:
            parts.append(f"digest: {bytes(value).hex()}")  # what the approver checks a build by
        elif isinstance(value, (bytes, bytearray)):
            parts.append(f"{name}: {len(value)} bytes")
        elif isinstance(value, str) and name in ("reason", "description", "scheme"):
            parts.append(f"{name}: {_shown(value, SHOWN_TEXT)}")
        elif isinstance(value, str):
            parts.append(f"{name}: {len(value)} characters")
        else:
            parts.append(f"{name}: {_shown(value, 64)}")
    return ", ".join(parts)


def _shown(value: Any, limit: int) -> str:
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… (cut: {len(text)} characters in all)"


# ---- moves ----------------------------------------------------------------------------------

def new_approval(*, approval_id: str, action: str, key_id: str, args: dict[str, Any],
                 salt: bytes, requester: str, required: int, now: datetime,
                 expires_at: datetime) -> Approval:
    if required < 1:
        raise ValueError("an approval needs a quorum of at least one")
    return Approval(id=approval_id, action=action, key_id=key_id,
                    request_hash=request_hash(action, key_id, args, salt), salt=salt.hex(),
                    requester=requester, required=required, state=P, created_at=now,
                    expires_at=expires_at, updated_at=now, summary=summarize(args))


def effective_state(approval: Approval, now: datetime) -> ApprovalState:
    if approval.state in OPEN and now >= approval.expires_at:
        return ApprovalState.EXPIRED
    return approval.state


def move(approval: Approval, event: Event, now: datetime, **changes: Any) -> Approval:
    """Apply ``event`` via the table; InvalidTransition (409) when the table has no entry."""
    target = TRANSITIONS.get((approval.state, event))
    if target is None:
        raise InvalidTransition(f"approval {approval.id} is {approval.state.value}; "
                                f"cannot {event.value}")
    return replace(approval, state=target, updated_at=now, **changes)


def expire(approval: Approval, now: datetime) -> Approval:
    if now < approval.expires_at:
        raise InvalidTransition(f"approval {approval.id} has not expired")
    return move(approval, Event.EXPIRE, now)


def vote(approval: Approval, voter: Principal, approve: bool, now: datetime,
         comment: str = "", signature: str = "", key_fingerprint: str = "") -> Approval:
    """Count ``voter``'s approve or deny. Raises Forbidden (requester, wrong role), Conflict
    (already voted, finished) or ApprovalExpired; returns the new approval otherwise."""
    if voter.role not in APPROVER_ROLES:
        raise Forbidden("only administrators and operators approve requests")
    if same_person(voter.subject, approval.requester):  # "OP1" is "op1" to a reader
        raise Forbidden("the requester cannot approve or deny their own request")
    if effective_state(approval, now) is ApprovalState.EXPIRED:
        raise ApprovalExpired(f"approval {approval.id} expired at {iso(approval.expires_at)}")
    if approval.state not in OPEN:
        raise InvalidTransition(f"approval {approval.id} is already {approval.state.value}")
    if any(same_person(v.approver, voter.subject) for v in approval.votes):
        raise Conflict(f"{voter.subject} already voted on approval {approval.id}; "
                       "each approver counts once")
    if not approve:
        ballot = Vote(voter.subject, voter.role.value, False, now, comment[:MAX_COMMENT],
                      signature, key_fingerprint)
        return move(approval, Event.DENY, now, votes=(*approval.votes, ballot))
    if approval.state is A:
        raise InvalidTransition(f"approval {approval.id} already has its quorum")
    ballot = Vote(voter.subject, voter.role.value, True, now, comment[:MAX_COMMENT],
                  signature, key_fingerprint)
    votes = (*approval.votes, ballot)
    done = sum(v.approve for v in votes) >= approval.required
    return move(approval, Event.QUORUM if done else Event.APPROVE, now, votes=votes)


def binds(approval: Approval, action: str, key_id: str, args: dict[str, Any]) -> bool:
    """Whether ``approval`` was created for exactly this request (its salted request hash)."""
    return approval.action == action and approval.key_id == key_id and hmac.compare_digest(
        approval.request_hash, request_hash(action, key_id, args, bytes.fromhex(approval.salt)))


def redeem(approval: Approval, requester: str, action: str, key_id: str,
           args: dict[str, Any], now: datetime) -> Approval:
    """The EXECUTED copy of ``approval`` if this exact request by its requester may run now.

    The binding is checked before the state, so a stranger learns nothing about an approval.
    """
    if approval.requester != requester:
        raise Forbidden(f"approval {approval.id} was requested by someone else")
    if not binds(approval, action, key_id, args):
        raise Forbidden(f"approval {approval.id} is for a different request (another "
                        "action, key or arguments): it cannot be used for this one")
    state = effective_state(approval, now)
    if state is ApprovalState.EXPIRED:
        raise ApprovalExpired(f"approval {approval.id} expired at {iso(approval.expires_at)}")
    if state is P:
        raise ApprovalPending(f"approval {approval.id} has {len(approval.approvers)} of "
                              f"{approval.required} approvals")
    if state is not A:
        raise InvalidTransition(f"approval {approval.id} is {state.value}; it cannot be used")
    people = distinct_approvers(approval)
    if len(people) < approval.required:  # votes counted under an older, laxer rule
        raise Forbidden(f"approval {approval.id} has {len(people)} of {approval.required} "
                        "approvals by distinct people other than the requester (votes whose "
                        "names read the same count once): request it again")
    return move(approval, Event.EXECUTE, now, executed_at=now)


def distinct_approvers(approval: Approval) -> list[str]:
    """The approving votes that count under the current rule: one a person, never the
    requester's (``same_person``). An approval stored by an older build, or restored from an
    old backup, may hold votes that rule refuses: they are not counted when it is redeemed."""
    people: list[str] = []
    for v in approval.votes:
        if v.approve and not same_person(v.approver, approval.requester) and not any(
                same_person(v.approver, p) for p in people):
            people.append(v.approver)
    return people


# ---- views and records ----------------------------------------------------------------------

def view(approval: Approval, now: datetime) -> dict[str, Any]:
    """The approval object of docs/api.md (plus requested_by, created_at, summary, denied_by)."""
    denial = next((v for v in approval.votes if not v.approve), None)
    return {
        "id": approval.id, "action": approval.action, "key_id": approval.key_id,
        "request_hash": approval.request_hash, "required": approval.required,
        "approvals": [_vote_view(v) for v in approval.votes if v.approve],
        "denied_by": _vote_view(denial) if denial else None,
        "state": effective_state(approval, now).value, "expires_at": iso(approval.expires_at),
        "requested_by": approval.requester, "created_at": iso(approval.created_at),
        "updated_at": iso(approval.updated_at), "executed_at": iso(approval.executed_at),
        "summary": approval.summary,
    }


def _vote_view(v: Vote) -> dict[str, Any]:
    out = {"actor": v.approver, "role": v.role, "at": iso(v.at), "comment": v.comment}
    return {**out, **_signed(v)}


def _signed(v: Vote) -> dict[str, str]:
    """A signed vote's signature and key fingerprint; nothing for an unsigned one (so records
    and views of unsigned votes are what they always were)."""
    if not v.signature:
        return {}
    return {"signature": v.signature, "key_fingerprint": v.key_fingerprint}


def to_record(a: Approval) -> dict[str, Any]:
    """What stores persist (the salt included; never the request arguments)."""
    return {"id": a.id, "action": a.action, "key_id": a.key_id, "request_hash": a.request_hash,
            "salt": a.salt, "requester": a.requester, "required": a.required,
            "state": a.state.value, "created_at": iso(a.created_at),
            "expires_at": iso(a.expires_at), "updated_at": iso(a.updated_at),
            "votes": [{"approver": v.approver, "role": v.role, "approve": v.approve,
                       "at": iso(v.at), "comment": v.comment, **_signed(v)} for v in a.votes],
            "summary": a.summary, "executed_at": iso(a.executed_at), "revision": a.revision,
            **({"change_seq": a.change_seq} if a.change_seq else {})}  # older records: none


def from_record(r: dict[str, Any]) -> Approval:
    """Inverse of to_record; KeyError/ValueError/TypeError on a malformed record."""
    return Approval(
        id=r["id"], action=r["action"], key_id=r["key_id"], request_hash=r["request_hash"],
        salt=r["salt"], requester=r["requester"], required=int(r["required"]),
        state=ApprovalState(r["state"]), created_at=_time(r["created_at"]),
        expires_at=_time(r["expires_at"]), updated_at=_time(r["updated_at"]),
        votes=tuple(Vote(v["approver"], v["role"], bool(v["approve"]), _time(v["at"]),
                         v["comment"], str(v.get("signature", "")),
                         str(v.get("key_fingerprint", ""))) for v in r["votes"]),
        summary=r["summary"], executed_at=parse_iso(r["executed_at"]),
        revision=int(r["revision"]), change_seq=int(r.get("change_seq", 0)))


def _time(text: str) -> datetime:
    value = parse_iso(text)
    if value is None:
        raise ValueError("missing time")
    return value
