"""Dual control: the pure state table (ferrohsm/approvals.py) and the workflow through KeyService
with an injected clock (ferrohsm/dualcontrol.py), on the memory and SQLite approval stores."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from servicekit import Clock as ClockBase
from servicekit import RecordingAudit

from ferrohsm.control.policy import Policy, TagPolicy
from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.crypto.seal import Sealer
from ferrohsm.domain import approval as apv
from ferrohsm.domain.approval import TRANSITIONS, Approval, ApprovalState, Event
from ferrohsm.domain.errors import (
    ApprovalRequired,
    AuditUnavailable,
    BadRequest,
    Conflict,
    FerroError,
    Forbidden,
    IntegrityError,
    InvalidTransition,
    Unavailable,
)
from ferrohsm.domain.model import SYSTEM_CONTEXT, Key, Principal, RequestContext, Role
from ferrohsm.engine.keycache import MaterialCache
from ferrohsm.engine.keyengine import KeyEngine
from ferrohsm.service import KeyService
from ferrohsm.store.approvalmac import ApprovalCodec
from ferrohsm.store.approvalstore import ApprovalStore
from ferrohsm.store.memory import MemoryStore
from ferrohsm.store.memory_approvals import MemoryApprovalStore
from ferrohsm.store.sqlite_approvals import SQLiteApprovalStore

CODEC = ApprovalCodec(RecordMac.for_approvals(b"a" * 32))  # the approval records' MAC


RECORD_MAC = RecordMac.derive(bytes(32))  # record MACs under a test master key
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
KEY_A = "01890a5d-ac96-774b-bcce-b302099a8057"
KEY_B = "01890a5d-ac96-774b-bcce-b302099a8058"
ALICE = Principal("alice", Role.ADMINISTRATOR)
BOB = Principal("bob", Role.OPERATOR)
CAROL = Principal("carol", Role.ADMINISTRATOR)


def approval(state: ApprovalState = ApprovalState.PENDING, required: int = 2,
             args: dict[str, Any] | None = None) -> Approval:
    a = apv.new_approval(approval_id="0190a5d0-0000-7000-8000-000000000001",
                         action="key.rollback", key_id=KEY_A, args=args or {"version": 1},
                         salt=b"s" * 16, requester="alice", required=required, now=NOW,
                         expires_at=NOW + timedelta(hours=1))
    return replace(a, state=state)


# ---- the table ------------------------------------------------------------------------------

@pytest.mark.parametrize("state", list(ApprovalState))
@pytest.mark.parametrize("event", list(Event))
def test_every_state_event_pair(state: ApprovalState, event: Event) -> None:
    before = approval(state)
    later = NOW + timedelta(minutes=1)
    if (state, event) in TRANSITIONS:
        after = apv.move(before, event, later)
        assert after.state is TRANSITIONS[(state, event)] and after.updated_at == later
    else:
        with pytest.raises(InvalidTransition):
            apv.move(before, event, later)
    assert before == approval(state)  # frozen: nothing changed in place


def test_finished_states_are_terminal() -> None:
    for state, _event in TRANSITIONS:
        assert state not in apv.FINISHED


# ---- request binding ------------------------------------------------------------------------

def test_request_hash_binds_action_key_and_arguments() -> None:
    salt = b"\x01" * 16
    base = apv.request_hash("key.rollback", KEY_A, {"version": 2, "x": b"ab"}, salt)
    assert base == apv.request_hash("key.rollback", KEY_A, {"x": b"ab", "version": 2}, salt)
    for other in (apv.request_hash("key.revoke", KEY_A, {"version": 2, "x": b"ab"}, salt),
                  apv.request_hash("key.rollback", KEY_B, {"version": 2, "x": b"ab"}, salt),
                  apv.request_hash("key.rollback", KEY_A, {"version": 3, "x": b"ab"}, salt),
                  apv.request_hash("key.rollback", KEY_A, {"version": 2, "x": "YWI="}, salt),
                  apv.request_hash("key.rollback", KEY_A, {"version": 2, "x": b"ab"}, b"\2" * 16)):
        assert other != base
    assert len(base) == 64


def test_summary_never_shows_payloads() -> None:
    text = apv.summarize({"plaintext": b"top secret", "reason": "compromised", "version": 2,
                          "wrapped": "fhsm:v1:QUFB", "aad": None})
    assert "top secret" not in text and "QUFB" not in text
    assert "plaintext: 10 bytes" in text and "'compromised'" in text and "version: 2" in text


def test_record_round_trip() -> None:
    a = apv.vote(approval(), BOB, True, NOW, "ok")
    a = replace(apv.vote(a, CAROL, True, NOW), revision=3)
    assert apv.from_record(apv.to_record(a)) == a


# ---- votes ----------------------------------------------------------------------------------

def test_votes_reach_the_quorum() -> None:
    once = apv.vote(approval(), BOB, True, NOW)
    assert once.state is ApprovalState.PENDING and once.approvers == ("bob",)
    twice = apv.vote(once, CAROL, True, NOW)
    assert twice.state is ApprovalState.APPROVED and twice.approvers == ("bob", "carol")


@pytest.mark.parametrize("voter,exc", [
    (ALICE, Forbidden),                              # the requester
    (Principal("alice", Role.OPERATOR), Forbidden),  # same subject, other role: still her
    (Principal("sam", Role.SERVICE), Forbidden),
    (Principal("una", Role.AUDITOR), Forbidden),
])
def test_who_may_not_vote(voter: Principal, exc: type[FerroError]) -> None:
    for approve in (True, False):
        with pytest.raises(exc):
            apv.vote(approval(), voter, approve, NOW)


def test_a_repeated_approver_counts_once() -> None:
    once = apv.vote(approval(), BOB, True, NOW)
    for again in (BOB, Principal("bob", Role.ADMINISTRATOR)):
        with pytest.raises(Conflict, match="counts once"):
            apv.vote(once, again, True, NOW)
        with pytest.raises(Conflict):
            apv.vote(once, again, False, NOW)
    assert once.approvers == ("bob",)


def test_one_deny_refuses_even_after_the_quorum() -> None:
    approved = apv.vote(apv.vote(approval(), BOB, True, NOW), CAROL, True, NOW)
    denied = apv.vote(approved, Principal("dave", Role.OPERATOR), False, NOW, "no")
    assert denied.state is ApprovalState.DENIED and apv.view(denied, NOW)["denied_by"]["actor"] \
        == "dave"
    with pytest.raises(InvalidTransition):
        apv.vote(denied, Principal("erin", Role.OPERATOR), True, NOW)


def test_votes_after_expiry_are_refused() -> None:
    with pytest.raises(apv.ApprovalExpired):
        apv.vote(approval(), BOB, True, NOW + timedelta(hours=1))


# ---- redeem ---------------------------------------------------------------------------------

APPROVED = apv.vote(apv.vote(approval(), BOB, True, NOW), CAROL, True, NOW)


@pytest.mark.parametrize("who,action,key_id,args,exc", [
    ("bob", "key.rollback", KEY_A, {"version": 1}, Forbidden),
    ("alice", "key.revoke", KEY_A, {"version": 1}, Forbidden),
    ("alice", "key.rollback", KEY_B, {"version": 1}, Forbidden),
    ("alice", "key.rollback", KEY_A, {"version": 2}, Forbidden),
    ("alice", "key.rollback", KEY_A, {}, Forbidden),
])
def test_redeem_refuses_another_request(who: str, action: str, key_id: str,
                                        args: dict[str, Any], exc: type[FerroError]) -> None:
    with pytest.raises(exc):
        apv.redeem(APPROVED, who, action, key_id, args, NOW)


def test_a_different_request_is_not_said_to_be_granted() -> None:
    """A pending approval was granted nothing: the refusal names the mismatch, not a grant."""
    for a in (approval(), APPROVED):
        with pytest.raises(Forbidden) as refused:
            apv.redeem(a, "alice", "key.rollback", KEY_A, {"version": 2}, NOW)
        assert "is for a different request" in refused.value.message
        assert "granted" not in refused.value.message


def test_redeem_by_state() -> None:
    done = apv.redeem(APPROVED, "alice", "key.rollback", KEY_A, {"version": 1}, NOW)
    assert done.state is ApprovalState.EXECUTED and done.executed_at == NOW
    cases: list[tuple[Approval, datetime, type[FerroError]]] = [
        (approval(), NOW, apv.ApprovalPending),
        (APPROVED, NOW + timedelta(hours=1), apv.ApprovalExpired),
        (done, NOW, InvalidTransition),
        (apv.vote(approval(), BOB, False, NOW), NOW, InvalidTransition),
    ]
    for a, when, exc in cases:
        with pytest.raises(exc):
            apv.redeem(a, "alice", "key.rollback", KEY_A, {"version": 1}, when)


def test_view_has_the_api_shape() -> None:
    view = apv.view(apv.vote(approval(), BOB, True, NOW), NOW)
    assert {"id", "action", "key_id", "request_hash", "required", "approvals", "state",
            "expires_at"} <= set(view)
    assert view["approvals"][0]["actor"] == "bob" and view["state"] == "pending"
    assert "salt" not in view
    assert apv.view(approval(), NOW + timedelta(hours=2))["state"] == "expired"


# ---- the workflow through KeyService, with an injected clock ---------------------------------

Audit = RecordingAudit


def Clock() -> ClockBase:  # noqa: N802 - reads like the class it builds
    return ClockBase(NOW)


TAGS = {"pci": TagPolicy(approvals_required=2, approval_actions=("rollback", "rotate", "unwrap"),
                         approval_ttl_seconds=600)}


class World:
    def __init__(self, approvals: ApprovalStore | None, store: MemoryStore | None = None) -> None:
        self.clock, self.audit = Clock(), Audit()
        self.store = store or MemoryStore(RECORD_MAC)
        engine = KeyEngine(Sealer(bytes(range(32))), MaterialCache(64, 300))
        self.service = KeyService(self.store, engine, self.audit, clock=self.clock,
                                  policy=Policy.from_config(TAGS), approvals=approvals)

    def key(self, *tags: str, usage: str = "encrypt") -> Key:
        return self.service.create_key(ctx(ALICE), algorithm="aes-256-gcm", usage=usage,
                                       tags=tags)

    def two_versions(self, *tags: str) -> Key:
        """A key with version 2 primary, rotated by the (ungated) scheduler path."""
        return self.service.scheduled_rotate(SYSTEM_CONTEXT, self.key(*tags).id, lambda k: True)

    def park(self, call: Any, *args: Any) -> dict[str, Any]:
        with pytest.raises(ApprovalRequired) as info:
            call(*args)
        return cast(dict[str, Any], info.value.details["approval"])

    def approve(self, approval_id: str, *voters: Principal) -> dict[str, Any]:
        view: dict[str, Any] = {}
        for voter in voters:
            view = self.service.approvals.decide(ctx(voter), approval_id, True)
        return view


def ctx(principal: Principal, approval_id: str | None = None) -> RequestContext:
    return RequestContext(principal, request_id="req", approval_id=approval_id)


@pytest.fixture(params=["memory", "sqlite"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    store: ApprovalStore = MemoryApprovalStore() if request.param == "memory" \
        else SQLiteApprovalStore(tmp_path / "approvals.sqlite3", CODEC)
    yield World(store)
    store.close()


def test_ungated_operations_run_at_once(world: World) -> None:
    plain, pci = world.key(), world.key("pci")
    world.service.rotate(ctx(ALICE), plain.id)
    world.service.revoke(ctx(ALICE), pci.id, "not gated")  # revoke is not in approval_actions
    assert not [a for a in world.audit.actions() if a.startswith("approval.")]


def test_a_gated_request_parks_with_the_api_shape(world: World) -> None:
    key = world.two_versions("pci")
    view = world.park(world.service.rollback, ctx(ALICE), key.id, 1)
    assert view["action"] == "key.rollback" and view["key_id"] == key.id
    assert view["required"] == 2 and view["approvals"] == [] and view["state"] == "pending"
    assert view["expires_at"] == "2026-11-28T12:10:00.000000Z"
    assert world.store.get(key.id).primary_version == 2  # nothing executed
    assert world.audit.actions()[-1] == "approval.requested"


def test_one_requester_holds_at_most_the_cap_of_open_approvals(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A looping or compromised identity cannot bury the approvers' queue: past the cap its
    new requests are refused (and recorded), a repeat of a parked one still gets its approval,
    and other requesters are not affected."""
    from ferrohsm.control import dualcontrol
    monkeypatch.setattr(dualcontrol, "MAX_OPEN_PER_REQUESTER", 3)
    keys = [world.key("pci") for _ in range(5)]
    first = world.park(world.service.rotate, ctx(ALICE), keys[0].id)["id"]
    for key in keys[1:3]:
        world.park(world.service.rotate, ctx(ALICE), key.id)
    with pytest.raises(Conflict, match="3 open approval requests"):
        world.service.rotate(ctx(ALICE), keys[3].id)
    assert world.audit.actions("error")[-1] == "key.rotate"
    assert world.park(world.service.rotate, ctx(ALICE), keys[0].id)["id"] == first
    world.park(world.service.rotate, ctx(CAROL), keys[3].id)  # another requester's own cap
    world.service.approvals.decide(ctx(BOB), first, False)  # a decided one frees a place
    world.park(world.service.rotate, ctx(ALICE), keys[4].id)
    for key in keys:  # the scheduler parks one per due key, however many
        world.park(world.service.rotate, SYSTEM_CONTEXT, key.id)


def test_subjects_that_read_the_same_are_one_person_for_dual_control(world: World) -> None:
    """Red team: "OP1" could approve "op1"'s request. A requester is refused under any spelling
    a reader of the log would take for theirs, and an approver counts once the same way."""
    key = world.two_versions("pci")
    approval_id = world.park(world.service.rollback, ctx(Principal("op1", Role.OPERATOR)),
                             key.id, 1)["id"]
    for disguise in ("OP1", "op1 ", "\u043ep1"):  # upper case, a blank, a Cyrillic o
        with pytest.raises(Forbidden, match="requester"):
            world.service.approvals.decide(ctx(Principal(disguise, Role.ADMINISTRATOR)),
                                           approval_id, True)
    world.approve(approval_id, BOB)
    with pytest.raises(Conflict, match="already voted"):
        world.approve(approval_id, Principal("Bob", Role.ADMINISTRATOR))


def test_votes_an_older_rule_counted_do_not_count_when_redeemed() -> None:
    """Upgrade tester: approvals approved by the previous build with ALICE and alice as two
    approvers, or OP1 approving op1's request, were still redeemed after the upgrade."""
    for requester, voters in (("op1", ("alice", "ALICE")), ("op1", ("OP1", "bob"))):
        a = replace(approval(), requester=requester)
        for voter in voters:  # stored as the older build stored them: no rule applied
            ballot = apv.Vote(voter, "operator", True, NOW, "", "", "")
            a = replace(a, votes=(*a.votes, ballot))
        a = replace(a, state=ApprovalState.APPROVED)
        with pytest.raises(Forbidden, match="1 of 2 approvals by distinct people"):
            apv.redeem(a, requester, a.action, a.key_id, {"version": 1},
                       NOW + timedelta(minutes=1))
    good = replace(approval(), requester="op1", state=ApprovalState.APPROVED, votes=(
        apv.Vote("alice", "operator", True, NOW, "", "", ""),
        apv.Vote("bob", "operator", True, NOW, "", "", "")))
    assert apv.redeem(good, "op1", good.action, good.key_id, {"version": 1},
                      NOW + timedelta(minutes=1)).state is ApprovalState.EXECUTED


def test_self_approval_and_repeated_approver(world: World) -> None:
    key = world.two_versions("pci")
    approval_id = world.park(world.service.rollback, ctx(ALICE), key.id, 1)["id"]
    with pytest.raises(Forbidden):
        world.service.approvals.decide(ctx(ALICE), approval_id, True)
    world.approve(approval_id, BOB)
    with pytest.raises(Conflict):
        world.approve(approval_id, BOB)
    view = world.service.approvals.get(ctx(CAROL), approval_id)
    assert [v["actor"] for v in view["approvals"]] == ["bob"] and view["state"] == "pending"
    with pytest.raises(ApprovalRequired):  # repeating before the quorum parks it again
        world.service.rollback(ctx(ALICE, approval_id), key.id, 1)
    assert world.audit.actions("denied").count("approval.decide") == 1


def test_quorum_then_ten_concurrent_repeats_execute_exactly_once(world: World) -> None:
    key = world.key("pci")
    approval_id = world.park(world.service.rotate, ctx(ALICE), key.id)["id"]
    assert world.approve(approval_id, BOB, CAROL)["state"] == "approved"
    barrier, outcomes = threading.Barrier(10), []

    def repeat() -> None:
        barrier.wait()
        try:
            world.service.rotate(ctx(ALICE, approval_id), key.id)
            outcomes.append("ok")
        except FerroError as exc:
            outcomes.append(type(exc).__name__)
    threads = [threading.Thread(target=repeat) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 1 and outcomes.count("InvalidTransition") == 9
    assert len(world.store.get(key.id).versions) == 2
    assert world.audit.actions("success").count("approval.executed") == 1
    assert world.audit.actions("success").count("key.rotate") == 1
    rotated = next(e for e in world.audit.events if e.action == "key.rotate")
    assert rotated.details["approval_id"] == approval_id


def test_an_executed_approval_put_back_as_approved_never_executes_again(tmp_path: Path) -> None:
    """The row of an approved request saved, the request executed, the row put back: its MAC
    is good (authentic once). The process that executed it refuses the copy, and so does a
    process that starts afresh and learns the newest revision from the log (``seen``)."""
    path = tmp_path / "approvals.sqlite3"
    store = SQLiteApprovalStore(path, CODEC)
    world = World(store)
    key = world.key("pci")
    approval_id = world.park(world.service.rotate, ctx(ALICE), key.id)["id"]
    world.approve(approval_id, BOB, CAROL)
    with sqlite3.connect(path) as db:
        saved = db.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
    world.service.rotate(ctx(ALICE, approval_id), key.id)
    executed = store.get(approval_id).revision

    def put_back() -> None:
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM approvals WHERE id = ?", (approval_id,))
            db.execute("INSERT INTO approvals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", saved)
    put_back()
    assert store.get(approval_id).state is ApprovalState.APPROVED  # authentic, but older
    with pytest.raises(IntegrityError, match="older copy"):
        world.service.rotate(ctx(ALICE, approval_id), key.id)
    fresh = World(store, world.store)  # a process started afresh on the same stores
    fresh.service.dual.seen({approval_id: executed})  # what a cold start read from the log
    with pytest.raises(IntegrityError, match="older copy"):
        fresh.service.rotate(ctx(ALICE, approval_id), key.id)
    assert len(world.store.get(key.id).versions) == 2  # rotated once, by the approval
    store.close()


def test_an_approval_replayed_elsewhere_is_refused(world: World) -> None:
    other = world.key("pci")
    wrapped = world.key("pci", usage="wrap")
    token = world.service.wrap(ctx(Principal("svc", Role.SERVICE)), wrapped.id, b"k" * 32)
    svc = Principal("svc", Role.SERVICE)
    approval_id = world.park(world.service.unwrap, ctx(svc), wrapped.id, token["wrapped"])["id"]
    world.approve(approval_id, BOB, CAROL)
    other_token = world.service.wrap(ctx(svc), wrapped.id, b"x" * 32)["wrapped"]
    attempts: list[Callable[[], object]] = [
        lambda: world.service.unwrap(ctx(svc, approval_id), wrapped.id, other_token),  # body
        lambda: world.service.unwrap(ctx(Principal("svc2", Role.SERVICE), approval_id),
                                     wrapped.id, token["wrapped"]),  # requester
        lambda: world.service.rotate(ctx(ALICE, approval_id), other.id),  # action and key
        lambda: world.service.unwrap(ctx(svc, "0190a5d0-0000-7000-8000-00000000dead"),
                                     wrapped.id, token["wrapped"]),  # no such approval
    ]
    for attempt in attempts:
        with pytest.raises(Forbidden):
            attempt()
    assert world.service.approvals.get(ctx(BOB), approval_id)["state"] == "approved"  # not consumed
    out = world.service.unwrap(ctx(svc, approval_id), wrapped.id, token["wrapped"])
    assert out["key_material"] == b"k" * 32
    with pytest.raises(InvalidTransition):  # and only once
        world.service.unwrap(ctx(svc, approval_id), wrapped.id, token["wrapped"])


def test_expiry(world: World) -> None:
    key = world.key("pci")
    approval_id = world.park(world.service.rotate, ctx(ALICE), key.id)["id"]
    world.approve(approval_id, BOB, CAROL)
    world.clock.advance(seconds=600)
    with pytest.raises(apv.ApprovalExpired):
        world.service.rotate(ctx(ALICE, approval_id), key.id)
    assert world.service.approvals.get(ctx(BOB), approval_id)["state"] == "expired"
    assert world.audit.actions("success").count("approval.expired") == 1
    late = world.park(world.service.rotate, ctx(ALICE), key.id)["id"]
    world.clock.advance(seconds=601)
    with pytest.raises(apv.ApprovalExpired):
        world.approve(late, BOB)
    assert world.service.dual.expire_due(ctx(BOB), world.clock()) == 0  # already persisted
    assert len(world.store.get(key.id).versions) == 1


def test_denied_approvals_cannot_be_used(world: World) -> None:
    key = world.key("pci")
    approval_id = world.park(world.service.rotate, ctx(ALICE), key.id)["id"]
    world.approve(approval_id, BOB)
    assert world.service.approvals.decide(ctx(CAROL), approval_id, False, "no")["state"] == "denied"
    with pytest.raises(InvalidTransition):
        world.service.rotate(ctx(ALICE, approval_id), key.id)


def test_every_transition_is_audited(world: World) -> None:
    key = world.key("pci")
    used = world.park(world.service.rotate, ctx(ALICE), key.id)["id"]
    world.approve(used, BOB, CAROL)
    world.service.rotate(ctx(ALICE, used), key.id)
    denied = world.park(world.service.rotate, ctx(ALICE), key.id)["id"]
    world.service.approvals.decide(ctx(BOB), denied, False)
    expired = world.park(world.service.rotate, ctx(ALICE), key.id)["id"]
    world.clock.advance(hours=1)
    assert world.service.dual.expire_due(ctx(BOB), world.clock()) == 1
    by_approval: dict[str, list[str]] = {}
    for e in world.audit.events:
        if e.action.startswith("approval.") and e.outcome == "success":
            by_approval.setdefault(str(e.details.get("approval_id")), []).append(e.action)
    assert by_approval[used] == ["approval.requested", "approval.approved", "approval.approved",
                                 "approval.executed"]
    assert by_approval[denied] == ["approval.requested", "approval.denied"]
    assert by_approval[expired] == ["approval.requested", "approval.expired"]
    listed = world.service.approvals.list(ctx(Principal("una", Role.AUDITOR)), "executed")
    assert [a["id"] for a in listed["approvals"]] == [used]
    with pytest.raises(BadRequest):  # ?state= empty is no state (a script's unset variable)
        world.service.approvals.list(ctx(Principal("una", Role.AUDITOR)), "")


def test_audit_failure_leaves_no_unrecorded_approval(world: World) -> None:
    key = world.key("pci")
    world.audit.ok = False
    with pytest.raises(AuditUnavailable):
        world.service.rotate(ctx(ALICE), key.id)
    world.audit.ok = True
    assert world.service.approvals.list(ctx(BOB), None)["approvals"] == []
    approval_id = world.park(world.service.rotate, ctx(ALICE), key.id)["id"]
    world.audit.ok = False
    with pytest.raises(AuditUnavailable):
        world.approve(approval_id, BOB)
    world.audit.ok = True
    assert world.service.approvals.get(ctx(BOB), approval_id)["approvals"] == []


def test_no_approval_store_fails_closed() -> None:
    w = World(None)
    with pytest.raises(Unavailable):
        w.service.rotate(ctx(ALICE), w.key("pci").id)
    w.service.rotate(ctx(ALICE), w.key().id)  # ungated keys are unaffected


def test_pending_approvals_survive_a_restart(tmp_path: Path) -> None:
    keys = MemoryStore(RECORD_MAC)  # the key store outlives the restart in this test
    first = World(SQLiteApprovalStore(tmp_path / "a.sqlite3", CODEC), keys)
    key = first.key("pci")
    approval_id = first.park(first.service.rotate, ctx(ALICE), key.id)["id"]
    first.approve(approval_id, BOB)
    assert first.service.dual.store is not None
    first.service.dual.store.close()
    second = World(SQLiteApprovalStore(tmp_path / "a.sqlite3", CODEC), keys)
    assert second.service.approvals.get(ctx(BOB), approval_id)["state"] == "pending"
    second.approve(approval_id, CAROL)
    second.service.rotate(ctx(ALICE, approval_id), key.id)
    assert len(keys.get(key.id).versions) == 2
    assert second.service.dual.store is not None
    second.service.dual.store.close()


def test_an_approver_sees_a_whole_description_and_a_cut_is_said() -> None:
    """A description or reason up to its own limit is shown whole: cut at 64 characters with
    its closing quote kept, it let a requester hide what mattered from the approver."""
    harmless = "Payments data key. Owner: payments team. Rotated quarterly, see "
    hidden = harmless + "HIDDEN PART: decommissioned, safe to destroy"
    text = apv.summarize({"description": hidden})
    assert text == f"description: {hidden!r}"
    longer = apv.summarize({"description": "x" * 20_000, "versions": list(range(100))})
    assert "… (cut: 20002 characters in all)" in longer
    # escapes never push the end of a text the API takes out of sight: 500 tabs are 1,000
    # characters of repr (a cut after 1,024 of them hid what followed), unassigned code
    # points 10 each
    for padding in ("\t" * 500, "\U0010fffe" * 1000):
        tail = "New owner: mallory"
        shown = apv.summarize({"description": "Routine owner update." + padding + tail})
        assert "(cut: " not in shown and shown.endswith(f"{tail}'"), shown[-60:]
    assert "versions: [0, 1, 2" in longer and "(cut: " in longer.split("versions: ")[1]


def test_an_approver_sees_the_digest_to_be_signed_not_a_message() -> None:
    digest = bytes(range(32))
    text = apv.summarize({"data": digest, "prehashed": True, "scheme": None})
    assert text == f"digest: {digest.hex()}, prehashed: True"
    message = apv.summarize({"data": b"a message to sign", "prehashed": False})
    assert message == "data: 17 bytes, prehashed: False"  # a message may be anything: a size
