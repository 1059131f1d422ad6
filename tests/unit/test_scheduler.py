"""The retention scheduler (ferrohsm/scheduler.py) with an injected clock: the pure plan() as a
table, scheduled rotation, archival and destruction through KeyService, overlapping ticks, a
restart, approval expiry/pruning, and destroyed material absent from every store file."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from servicekit import Clock as ClockBase
from servicekit import RecordingAudit

from ferrohsm.audit.chain import AuditEvent
from ferrohsm.audit.sinks import FileSink
from ferrohsm.control.policy import Policy, Rules, TagPolicy
from ferrohsm.control.scheduler import Job, JobKind, RetentionScheduler, TickReport, plan
from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.crypto.seal import Sealer
from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.errors import ApprovalRequired, Conflict, InvalidTransition
from ferrohsm.domain.model import Key, KeyState, Principal, RequestContext, Role, VersionState
from ferrohsm.engine.keycache import MaterialCache
from ferrohsm.engine.keyengine import KeyEngine
from ferrohsm.service import KeyService
from ferrohsm.store.approvalmac import ApprovalCodec
from ferrohsm.store.approvalstore import ApprovalStore
from ferrohsm.store.filesystem import FilesystemStore
from ferrohsm.store.keystore import KeyStore
from ferrohsm.store.memory import MemoryStore
from ferrohsm.store.memory_approvals import MemoryApprovalStore
from ferrohsm.store.sqlite import SQLiteStore
from ferrohsm.store.sqlite_approvals import SQLiteApprovalStore

CODEC = ApprovalCodec(RecordMac.for_approvals(b"a" * 32))  # the approval records' MAC


RECORD_MAC = RecordMac.derive(bytes(32))  # record MACs under a test master key
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
KEY_ID = "01890a5d-ac96-774b-bcce-b302099a8057"
ALICE, BOB, CAROL = (Principal("alice", Role.ADMINISTRATOR), Principal("bob", Role.OPERATOR),
                     Principal("carol", Role.ADMINISTRATOR))
TAGS = {
    "rotating": TagPolicy(rotation_days=30, archive_after_days=60, destroy_grace_hours=2),
    "pci": TagPolicy(approvals_required=2, approval_actions=("rollback",),
                     approval_ttl_seconds=600),
    "reprieve": TagPolicy(approvals_required=1, approval_actions=("cancel-destroy",),
                          approval_ttl_seconds=86400, destroy_grace_hours=1),
}


# ---- plan(): pure ---------------------------------------------------------------------------

def aged_key(state: KeyState, versions_days_ago: tuple[int, ...], primary: int | None = None,
             destroy_in: timedelta | None = None) -> Key:
    """A key whose versions were created the given number of days before NOW."""
    first = NOW - versions_days_ago[0] * DAY
    key = lc.new_key(key_id=KEY_ID, name=None, description="", algorithm="aes-256-gcm",
                     usage="encrypt", tags=(), sealed=b"v1", now=first, actor="a")
    for n, days in enumerate(versions_days_ago[1:], start=2):
        key = lc.rotate(key, f"v{n}".encode(), NOW - days * DAY, "a")
    if primary is not None:
        key = lc.rollback(key, primary, NOW, "a")
    if state is KeyState.REVOKED:
        key = lc.revoke(key, NOW, "a")
    if state is KeyState.DESTROY_SCHEDULED:
        key = lc.schedule_destroy(key, NOW - 3 * DAY, "a", 3 * DAY + (destroy_in or timedelta()))
    return key


R = Rules(rotation=30 * DAY, archive_after=60 * DAY)
ROTATE, DESTROY = Job(JobKind.ROTATE, KEY_ID), Job(JobKind.DESTROY, KEY_ID)


def archive(version: int) -> Job:
    return Job(JobKind.ARCHIVE, KEY_ID, version)


@pytest.mark.parametrize("key,rules,jobs", [
    (aged_key(KeyState.ACTIVE, (10,)), R, []),
    (aged_key(KeyState.ACTIVE, (30,)), R, [ROTATE]),                 # exactly at the period
    (aged_key(KeyState.ACTIVE, (31,)), Rules(), []),                 # no rotation_days
    (aged_key(KeyState.ACTIVE, (100,)), R, [ROTATE]),                # the primary is never archived
    (aged_key(KeyState.ACTIVE, (100, 5)), R, [archive(1)]),
    (aged_key(KeyState.ACTIVE, (100, 61, 40)), R, [archive(1), archive(2), ROTATE]),
    (aged_key(KeyState.ACTIVE, (100, 5), primary=1), R, []),        # rollback: newest is fresh
    (aged_key(KeyState.REVOKED, (100, 61)), R, [archive(1)]),        # revoked: no rotation
    (aged_key(KeyState.DESTROY_SCHEDULED, (100, 61)), R, [DESTROY]),
    (aged_key(KeyState.DESTROY_SCHEDULED, (100,), destroy_in=timedelta(seconds=1)), R, []),
])
def test_plan(key: Key, rules: Rules, jobs: list[Job]) -> None:
    assert plan(key, rules, NOW) == jobs


# ---- the scheduler over a real service -------------------------------------------------------

Audit = RecordingAudit


def Clock() -> ClockBase:  # noqa: N802 - reads like the class it builds
    return ClockBase(NOW)


def ctx(principal: Principal, approval_id: str | None = None) -> RequestContext:
    return RequestContext(principal, request_id="req", approval_id=approval_id)


def service(store: KeyStore, audit: Any, clock: ClockBase,
            approvals: ApprovalStore | None = None) -> KeyService:
    policy = Policy.from_config(TAGS, default_grace_hours=24)
    engine = KeyEngine(Sealer(bytes(range(32))), MaterialCache(64, 300))
    return KeyService(store, engine, audit, clock=clock, policy=policy,
                      approvals=approvals or MemoryApprovalStore(),
                      destroy_grace=lambda k: policy.rules_for(k).destroy_grace)


@pytest.fixture
def world() -> Iterator[tuple[KeyService, Audit, ClockBase, RetentionScheduler]]:
    clock, audit = Clock(), Audit()
    svc = service(MemoryStore(RECORD_MAC), audit, clock)
    yield svc, audit, clock, RetentionScheduler(svc, approval_retention_days=30)


World = tuple[KeyService, Audit, ClockBase, RetentionScheduler]


def approval_of(exc: ApprovalRequired) -> str:
    return str(cast(dict[str, Any], exc.details["approval"])["id"])


def create(svc: KeyService, *tags: str) -> Key:
    return svc.create_key(ctx(ALICE), algorithm="aes-256-gcm", usage="encrypt", tags=tags)


def test_scheduled_rotation_then_archival(world: World) -> None:
    svc, audit, clock, scheduler = world
    key, untagged = create(svc, "rotating"), create(svc)
    svc_ctx = ctx(Principal("app", Role.SERVICE))
    old = svc.encrypt(svc_ctx, key.id, b"before rotation")["ciphertext"]
    clock.advance(days=29)
    assert scheduler.tick().rotated == 0
    clock.advance(days=1)
    assert scheduler.tick().rotated == 1 and scheduler.tick().rotated == 0  # once per period
    rotated = svc.store.get(key.id)
    assert rotated.primary_version == 2 and len(svc.store.get(untagged.id).versions) == 1
    assert audit.count("scheduler.rotate") == 1
    assert [(e.actor, e.outcome) for e in audit.events if e.action == "scheduler.rotate"] \
        == [("system", "intent"), ("system", "success")]  # recorded first, confirmed after
    clock.advance(days=30)  # v1 is 60 days old now; v2 is 30 days old and due for rotation
    report = scheduler.tick()
    assert (report.archived, report.rotated) == (1, 1)
    after = svc.store.get(key.id)
    assert [v.state for v in after.versions] == [VersionState.ARCHIVED, VersionState.ENABLED,
                                                  VersionState.ENABLED]
    assert audit.count("scheduler.archive") == 1
    assert svc.decrypt(svc_ctx, key.id, old)["plaintext"] == b"before rotation"  # process: ok
    assert svc.encrypt(svc_ctx, key.id, b"new")["key_version"] == 3
    with pytest.raises(Conflict):  # an archived version never becomes primary again
        svc.rollback(ctx(ALICE), key.id, 1)


def test_scheduled_destruction_with_grace_and_cancel(world: World) -> None:
    svc, audit, clock, scheduler = world
    kept, doomed = create(svc, "rotating"), create(svc, "rotating")
    for k in (kept, doomed):
        svc.schedule_destroy(ctx(ALICE), k.id)  # rotating: its own 2 h grace, not the 24 h default
    assert svc.store.get(doomed.id).destroy_after == NOW + timedelta(hours=2)
    clock.advance(hours=1, minutes=59)
    assert scheduler.tick().destroyed == 0
    svc.cancel_destroy(ctx(ALICE), kept.id)  # cancellable until the grace ends
    clock.advance(minutes=1)
    with pytest.raises(InvalidTransition):
        svc.cancel_destroy(ctx(ALICE), doomed.id)
    assert scheduler.tick().destroyed == 1
    gone = svc.store.get(doomed.id)
    assert gone.state is KeyState.DESTROYED and all(v.sealed is None for v in gone.versions)
    assert gone.history[-1].action == "destroy_complete" and gone.name == doomed.name
    assert svc.store.get(kept.id).state is KeyState.ACTIVE
    record = [e for e in audit.events
              if e.action == "key.destroy_complete" and e.outcome == "success"]
    assert len(record) == 1 and record[0].message.startswith("attestation: material of")
    assert "approval none" in record[0].message and "scheduled by alice" in record[0].message
    assert record[0].details["destroyed_versions"] == "1"
    assert str(record[0].details["sealed_sha256"]).startswith("v1:")
    assert scheduler.tick().destroyed == 0  # nothing twice


def test_destroying_a_quorum_key_needs_the_quorum_and_attests_it(world: World) -> None:
    svc, audit, clock, scheduler = world
    key = create(svc, "pci")  # "destroy" is not listed, but a quorum always covers it
    with pytest.raises(ApprovalRequired) as parked:
        svc.schedule_destroy(ctx(ALICE), key.id)
    approval_id = approval_of(parked.value)
    for voter in (BOB, CAROL):
        svc.approvals.decide(ctx(voter), approval_id, True)
    svc.schedule_destroy(ctx(ALICE, approval_id), key.id)
    clock.advance(hours=24)
    assert scheduler.tick().destroyed == 1
    record = next(e for e in audit.events
                  if e.action == "key.destroy_complete" and e.outcome == "success")
    assert record.details["approval_id"] == approval_id and approval_id in record.message


def test_a_destruction_waits_while_its_cancellation_awaits_approval(world: World) -> None:
    """The scheduler destroyed a key while a request to cancel that destruction waited for
    its approver, who could then still approve what could never run (an outside tester). The
    destruction is held until the request is decided, or expires (its TTL bounds the hold)."""
    svc, _, clock, scheduler = world
    key = create(svc, "reprieve")
    with pytest.raises(ApprovalRequired) as destroy:  # a quorum always covers destroy
        svc.schedule_destroy(ctx(ALICE), key.id)
    svc.approvals.decide(ctx(BOB), approval_of(destroy.value), True)
    svc.schedule_destroy(ctx(ALICE, approval_of(destroy.value)), key.id)
    with pytest.raises(ApprovalRequired) as parked:
        svc.cancel_destroy(ctx(ALICE), key.id)
    clock.advance(hours=2)  # past the grace
    report = scheduler.tick()
    assert (report.destroyed, report.held) == (0, 1)
    assert svc.store.get(key.id).state is KeyState.DESTROY_SCHEDULED
    svc.approvals.decide(ctx(BOB), approval_of(parked.value), False)  # denied: no reprieve
    assert scheduler.tick().destroyed == 1
    assert svc.store.get(key.id).state is KeyState.DESTROYED


def test_overlapping_ticks(world: World) -> None:
    svc, audit, clock, scheduler = world
    keys = [create(svc, "rotating") for _ in range(12)]
    clock.advance(days=31)
    scheduler._running.acquire()  # a tick in progress
    try:
        assert scheduler.tick().skipped
    finally:
        scheduler._running.release()
    # Two schedulers (two processes on one store) racing: CAS + the re-checked precondition
    # make every key rotate exactly once.
    twins = [scheduler, RetentionScheduler(svc)]
    barrier = threading.Barrier(2)
    reports = []

    def run(s: RetentionScheduler) -> None:
        barrier.wait()
        reports.append(s.tick())
    threads = [threading.Thread(target=run, args=(s,)) for s in twins]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(svc.store.get(k.id).versions) == 2 for k in keys)
    assert sum(r.rotated for r in reports) == 12
    assert audit.count("scheduler.rotate") == 12


def test_a_tick_survives_an_audit_outage(world: World) -> None:
    svc, audit, clock, scheduler = world
    key = create(svc, "rotating")
    clock.advance(days=31)
    audit.ok = False
    report = scheduler.tick()  # fails closed: nothing rotates without its record
    assert report.rotated == 0 and report.failed == 2  # pruning + the rotation
    assert len(svc.store.get(key.id).versions) == 1
    audit.ok = True
    assert scheduler.tick().rotated == 1


def test_one_keys_failure_does_not_stop_the_tick_for_the_others(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error on one key (a date sum that overflows, a bug) is logged and counted;
    the keys after it are still rotated."""
    import ferrohsm.control.scheduler as scheduling
    svc, _, clock, scheduler = world
    broken, fine = create(svc, "rotating"), create(svc, "rotating")

    def planned(key: Key, rules: Rules, now: datetime) -> list[Job]:
        if key.id == broken.id:
            raise OverflowError("date value out of range")
        return plan(key, rules, now)
    monkeypatch.setattr(scheduling, "plan", planned)
    clock.advance(days=31)
    report = scheduler.tick()
    assert report.failed == 1 and report.rotated == 1
    assert svc.store.get(fine.id).primary_version == 2
    assert svc.store.get(broken.id).primary_version == 1


def test_a_restart_resumes_from_persisted_state(tmp_path: Path) -> None:
    clock, audit = Clock(), Audit()
    store = FilesystemStore(tmp_path / "keys", RECORD_MAC)
    key = create(service(store, audit, clock), "rotating")
    service(store, audit, clock).schedule_destroy(ctx(ALICE), key.id)
    store.close()
    clock.advance(hours=25)  # the server was down when the grace ended
    store = FilesystemStore(tmp_path / "keys", RECORD_MAC)
    try:
        fresh = RetentionScheduler(service(store, audit, clock))
        assert fresh.tick().destroyed == 1
        assert store.get(key.id).state is KeyState.DESTROYED
    finally:
        store.close()


def test_ticks_expire_and_prune_approvals(world: World) -> None:
    svc, audit, clock, scheduler = world
    key = create(svc, "pci")
    with pytest.raises(ApprovalRequired) as parked:
        svc.schedule_destroy(ctx(ALICE), key.id)
    approval_id = approval_of(parked.value)
    clock.advance(seconds=600)
    assert scheduler.tick().expired == 1 and audit.count("approval.expired") == 1
    assert scheduler.tick().expired == 0
    clock.advance(days=29)
    assert scheduler.tick().pruned == 0
    clock.advance(days=1, seconds=1)
    assert scheduler.tick().pruned == 1 and audit.count("scheduler.prune") == 1
    assert svc.approvals.list(ctx(BOB), None)["approvals"] == []
    assert approval_id


# ---- destroyed material is absent from every store file --------------------------------------

def needles(svc: KeyService, key: Key) -> list[bytes]:
    """Every form the key's material could take in a file: sealed and unsealed, raw and base64."""
    found = []
    for v in key.versions:
        assert v.sealed is not None
        plain = svc.engine.sealer.unseal(v.sealed, key_id=key.id, version=v.version,
                                         algorithm=key.algorithm)
        for blob in (v.sealed, plain):
            found += [blob, base64.b64encode(blob), base64.urlsafe_b64encode(blob)]
    return found


def files_containing(root: Path, patterns: list[bytes]) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and any(n in p.read_bytes() for n in patterns))


STORES: dict[str, Callable[[Path], KeyStore]] = {
    "filesystem": lambda d: FilesystemStore(d, RECORD_MAC),
    "sqlite": lambda d: SQLiteStore(d / "keys.sqlite3", RECORD_MAC),
}


@pytest.mark.parametrize("kind", ["filesystem", "sqlite"])
def test_destroyed_material_is_absent_from_every_store_file(tmp_path: Path, kind: str) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    clock = Clock()
    store = STORES[kind](data)
    audit = FileSink(data / "audit", bytes(32), durable=False)
    approvals = SQLiteApprovalStore(data / "approvals.sqlite3", CODEC)
    try:
        svc = service(store, audit, clock, approvals)
        key = create(svc, "rotating")
        bystander = create(svc, "rotating")
        svc.encrypt(ctx(Principal("app", Role.SERVICE)), key.id, b"warm the cache")
        clock.advance(days=31)
        scheduler = RetentionScheduler(svc)
        scheduler.tick()  # two versions of material now
        key = svc.store.get(key.id)
        patterns = needles(svc, key)
        assert files_containing(data, patterns), "the search must find live material"
        svc.schedule_destroy(ctx(ALICE), key.id)
        clock.advance(hours=24)
        assert scheduler.tick().destroyed == 1
        assert files_containing(data, patterns) == []
        assert files_containing(data, needles(svc, svc.store.get(bystander.id)))  # untouched
        assert svc.store.get(key.id).state is KeyState.DESTROYED
    finally:
        approvals.close()
        audit.close()
        store.close()
    assert files_containing(data, patterns) == []  # and after the files are closed


def test_scheduler_prunes_the_sqlite_audit_log_and_the_rest_verifies(tmp_path: Path) -> None:
    """--audit-retention-days: old records go, a checkpoint record keeps the chain verifiable."""
    import secrets as _secrets
    from datetime import datetime as _dt
    from datetime import timedelta as _td

    from ferrohsm.audit.sinks import SQLiteSink
    from ferrohsm.audit.verify import verify_paths
    from ferrohsm.control.scheduler import RetentionScheduler
    key = _secrets.token_bytes(32)
    clock = [_dt(2026, 1, 1, tzinfo=UTC)]
    sink = SQLiteSink(tmp_path / "audit.sqlite3", key, retention_days=30,
                      clock=lambda: clock[0])
    for n in range(10):
        sink.append(AuditEvent(actor="a", role="operator", action="key.rotate",
                               outcome="success", message=f"old {n}"))
    clock[0] += _td(days=40)
    sink.append(AuditEvent(actor="a", role="operator", action="key.rotate", outcome="success",
                           message="recent"))

    # Only the audit hook is exercised here; the scheduler's key work is covered above.
    scheduler = RetentionScheduler.__new__(RetentionScheduler)
    scheduler.audit_prune = sink.prune
    report = TickReport()
    RetentionScheduler._prune_audit(scheduler, clock[0], report)
    assert report.audit_pruned >= 10
    records = sink.read(0, 1000)
    assert records[0]["seq"] > 1 and any(r["action"] == "audit.checkpoint" for r in records)
    sink.close()
    assert verify_paths([str(tmp_path / "audit.sqlite3")], key).ok
