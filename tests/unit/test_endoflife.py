"""Retention to the end of a key's life (control/endoflife.py) with an injected clock: the pure
purge and age decisions as tables, then the scheduler over a real KeyService: archived versions
purged after purge_after_days, old keys scheduled for destruction after max_key_age_days, and,
when a tag requires approvals, the scheduler parking one approval, waiting for its quorum,
executing it once and attesting it; a denial holds for the approval window."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from servicekit import Clock, RecordingAudit

from ferrohsm.control.endoflife import purgeable, too_old
from ferrohsm.control.policy import Policy, Rules, TagPolicy
from ferrohsm.control.scheduler import RetentionScheduler
from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.crypto.seal import Sealer
from ferrohsm.domain import approval as apv
from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.errors import Conflict, Gone
from ferrohsm.domain.model import Key, KeyState, Principal, RequestContext, Role, VersionState
from ferrohsm.engine.keycache import MaterialCache
from ferrohsm.engine.keyengine import KeyEngine
from ferrohsm.service import KeyService
from ferrohsm.store.memory import MemoryStore
from ferrohsm.store.memory_approvals import MemoryApprovalStore

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
KEY_ID = "01890a5d-ac96-774b-bcce-b302099a8057"
ALICE, BOB, CAROL = (Principal("alice", Role.ADMINISTRATOR), Principal("bob", Role.OPERATOR),
                     Principal("carol", Role.ADMINISTRATOR))
TAGS = {
    "purging": TagPolicy(archive_after_days=10, purge_after_days=30),
    "aging": TagPolicy(max_key_age_days=365, destroy_grace_hours=1),
    "pci-aging": TagPolicy(approvals_required=2, max_key_age_days=10, destroy_grace_hours=1,
                           approval_ttl_seconds=3600),
    "pci-purging": TagPolicy(approvals_required=1, archive_after_days=1, purge_after_days=1,
                             approval_ttl_seconds=3600),
}


# ---- the pure decisions ----------------------------------------------------------------------

def key_with(archived_days_ago: int | None, created_days_ago: int = 100,
             state: KeyState = KeyState.ACTIVE) -> Key:
    """Two versions (v2 primary); v1 archived ``archived_days_ago`` days before NOW."""
    key = lc.new_key(key_id=KEY_ID, name=None, description="", algorithm="aes-256-gcm",
                     usage="encrypt", tags=(), sealed=b"v1", now=NOW - created_days_ago * DAY,
                     actor="a")
    key = lc.rotate(key, b"v2", NOW - created_days_ago * DAY, "a")
    if archived_days_ago is not None:
        key = lc.archive_version(key, 1, NOW - archived_days_ago * DAY, "a")
    if state is KeyState.REVOKED:
        key = lc.revoke(key, NOW, "a")
    if state is KeyState.DESTROY_SCHEDULED:
        key = lc.schedule_destroy(key, NOW, "a", DAY)
    return key


PURGE = Rules(purge_after=30 * DAY)
AGE = Rules(max_age=365 * DAY)


@pytest.mark.parametrize("key,rules,versions", [
    (key_with(None), PURGE, []),                       # enabled versions are never purged
    (key_with(29), PURGE, []),
    (key_with(30), PURGE, [1]),                        # exactly at the age
    (key_with(300), Rules(), []),                      # no purge_after_days
    (key_with(40, state=KeyState.REVOKED), PURGE, [1]),
    (key_with(40, state=KeyState.DESTROY_SCHEDULED), PURGE, []),  # the whole key goes anyway
])
def test_purgeable(key: Key, rules: Rules, versions: list[int]) -> None:
    assert purgeable(key, rules, NOW) == versions


@pytest.mark.parametrize("key,rules,due", [
    (key_with(None, created_days_ago=364), AGE, False),
    (key_with(None, created_days_ago=365), AGE, True),
    (key_with(None, created_days_ago=5000), Rules(), False),
    (key_with(None, created_days_ago=400, state=KeyState.REVOKED), AGE, True),
    (key_with(None, created_days_ago=400, state=KeyState.DESTROY_SCHEDULED), AGE, False),
])
def test_too_old(key: Key, rules: Rules, due: bool) -> None:
    assert too_old(key, rules, NOW) is due


def test_archival_time_comes_from_the_history() -> None:
    key = key_with(12)
    assert lc.archived_at(key, 1) == NOW - 12 * DAY
    assert lc.archived_at(key, 2) is None


# ---- the scheduler over a real service -------------------------------------------------------

World = tuple[KeyService, RecordingAudit, Clock, RetentionScheduler, MemoryApprovalStore]


@pytest.fixture
def world() -> Iterator[World]:
    clock, audit, approvals = Clock(NOW), RecordingAudit(), MemoryApprovalStore()
    policy = Policy.from_config(TAGS, default_grace_hours=24)
    engine = KeyEngine(Sealer(bytes(range(32))), MaterialCache(64, 300))
    svc = KeyService(MemoryStore(RecordMac.derive(bytes(32))), engine, audit, clock=clock,
                     policy=policy, approvals=approvals,
                     destroy_grace=lambda k: policy.rules_for(k).destroy_grace)
    yield svc, audit, clock, RetentionScheduler(svc), approvals


def ctx(principal: Principal, approval_id: str | None = None) -> RequestContext:
    return RequestContext(principal, request_id="req", approval_id=approval_id)


def create(svc: KeyService, *tags: str) -> Key:
    return svc.create_key(ctx(ALICE), algorithm="aes-256-gcm", usage="encrypt", tags=tags)


def success(audit: RecordingAudit, action: str) -> list[dict[str, object]]:
    return [dict(e.details) for e in audit.events if e.action == action
            and e.outcome == "success"]


def test_archived_versions_are_purged_after_purge_after_days(world: World) -> None:
    svc, audit, clock, scheduler, _ = world
    key = create(svc, "purging")
    sealed_v1 = key.versions[0].sealed
    svc.rotate(ctx(ALICE), key.id)
    clock.advance(days=10)
    assert scheduler.tick().archived == 1
    clock.advance(days=29)
    assert scheduler.tick().purged == 0
    clock.advance(days=1)
    assert scheduler.tick().purged == 1
    after = svc.store.get(key.id)
    assert after.versions[0].state is VersionState.DESTROYED and after.versions[0].sealed is None
    assert after.versions[1].state is VersionState.ENABLED and after.state is KeyState.ACTIVE
    (record,) = success(audit, "scheduler.purge")
    assert record["destroyed_version"] == 1
    assert record["sealed_sha256"] == hashlib.sha256(sealed_v1 or b"").hexdigest()
    assert scheduler.tick().purged == 0  # once
    assert len(success(audit, "scheduler.purge")) == 1


def test_old_keys_are_scheduled_for_destruction_then_destroyed(world: World) -> None:
    svc, audit, clock, scheduler, _ = world
    key, young = create(svc, "aging"), None
    clock.advance(days=200)
    young = create(svc, "aging")
    clock.advance(days=165)
    report = scheduler.tick()
    assert (report.retired, report.destroyed) == (1, 0)
    assert svc.store.get(key.id).state is KeyState.DESTROY_SCHEDULED
    assert svc.store.get(young.id).state is KeyState.ACTIVE
    assert scheduler.tick().retired == 0  # already scheduled: not twice
    clock.advance(hours=24)  # the grace: never shorter than [crypto].destroy_grace_hours
    assert scheduler.tick().destroyed == 1
    assert svc.store.get(key.id).state is KeyState.DESTROYED
    assert len(success(audit, "scheduler.max_age")) == 1
    assert len(success(audit, "key.destroy_complete")) == 1


def test_under_dual_control_the_scheduler_parks_waits_and_executes_once(world: World) -> None:
    svc, audit, clock, scheduler, approvals = world
    key = create(svc, "pci-aging")
    clock.advance(days=10)
    assert scheduler.tick().parked == 1
    (approval,) = approvals.list(None, clock())
    assert approval.requester == "system" and approval.action == "key.destroy"
    assert approval.key_id == key.id and approval.state is apv.ApprovalState.PENDING
    requested = len(success(audit, "approval.requested"))
    for _ in range(3):  # waiting: no second approval, no new records
        report = scheduler.tick()
        assert (report.waiting, report.parked, report.retired) == (1, 0, 0)
    assert len(approvals.list(None, clock())) == 1
    assert len(success(audit, "approval.requested")) == requested
    svc.approvals.decide(ctx(BOB), approval.id, True)
    assert scheduler.tick().waiting == 1  # one of two
    svc.approvals.decide(ctx(CAROL), approval.id, True)
    assert scheduler.tick().retired == 1
    assert approvals.get(approval.id).state is apv.ApprovalState.EXECUTED
    assert svc.store.get(key.id).state is KeyState.DESTROY_SCHEDULED
    assert scheduler.tick().retired == 0 and len(approvals.list(None, clock())) == 1
    clock.advance(hours=24)  # the grace: never shorter than [crypto].destroy_grace_hours
    assert scheduler.tick().destroyed == 1
    (attestation,) = success(audit, "key.destroy_complete")
    assert attestation["approval_id"] == approval.id


def test_a_denied_purge_waits_for_the_window_then_asks_again(world: World) -> None:
    svc, _, clock, scheduler, approvals = world
    key = create(svc, "pci-purging")
    svc.rotate(ctx(ALICE), key.id)
    clock.advance(days=1)
    scheduler.tick()  # archives v1
    clock.advance(days=1)
    assert scheduler.tick().parked == 1
    (first,) = approvals.list(apv.ApprovalState.PENDING, clock())
    assert first.action == "key.destroy_version"
    svc.approvals.decide(ctx(BOB), first.id, False, "still needed")
    assert scheduler.tick().waiting == 1
    clock.advance(minutes=59)
    assert scheduler.tick().waiting == 1
    clock.advance(minutes=2)
    assert scheduler.tick().parked == 1
    (second,) = approvals.list(apv.ApprovalState.PENDING, clock())
    assert second.id != first.id
    svc.approvals.decide(ctx(BOB), second.id, True)
    assert scheduler.tick().purged == 1
    assert svc.store.get(key.id).versions[0].state is VersionState.DESTROYED


def test_destroying_one_version_refuses_the_primary_and_a_second_time(world: World) -> None:
    svc, audit, _, _, _ = world
    key = svc.rotate(ctx(ALICE), create(svc).id)
    with pytest.raises(Conflict, match="primary"):
        svc.destroy_version(ctx(ALICE), key.id, 2)
    done = svc.destroy_version(ctx(ALICE), key.id, 1)
    assert done.versions[0].state is VersionState.DESTROYED
    with pytest.raises(Gone):
        svc.destroy_version(ctx(ALICE), key.id, 1)
    (record,) = success(audit, "key.destroy_version")
    assert record["destroyed_version"] == 1 and record["store"]
    assert "key.destroy_version" in audit.actions("intent")
