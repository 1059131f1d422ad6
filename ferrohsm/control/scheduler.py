"""The retention scheduler: tag lifetimes enforced inside the server, one tick at a time.

Each tick (every ``[scheduler].interval_seconds``):

1. persists the expiry of approvals whose window closed (``approval.expired``);
2. prunes finished approvals older than ``--approval-retention-days`` (``scheduler.prune``);
3. plans, per key, with the pure ``plan(key, rules, now)``:
   - ``destroy``: the destroy grace has passed -> material erased in the store, metadata and
     history kept, attestation record ``key.destroy_complete``;
   - ``rotate``: the newest version is older than ``rotation_days`` -> ``scheduler.rotate``;
   - ``archive``: a non-primary enabled version is older than ``archive_after_days`` ->
     ``scheduler.archive`` (decrypt/verify/unwrap only from then on);
   and runs the jobs through KeyService, which audits each one.

Why it is safe when ticks overlap and across restarts:

* Nothing lives in memory between ticks: every decision is recomputed from persisted state (key
  times, approval expiry), so a restart simply resumes at the next tick, and a tick that died
  half-way leaves nothing to clean up.
* Within one process a tick that finds the previous one still running skips (non-blocking lock).
* Across processes sharing a store, every move is compare-and-swap on the key's revision with the
  precondition re-checked on the fresh copy (rotation: still due; archive/destroy: the lifecycle
  table refuses a second move), so a second scheduler's attempt fails harmlessly (audited as an
  error) instead of rotating or destroying twice.

With several processes or nodes on one store, only the LEADER ticks (``leader``: a flock in the
data directory, or a PostgreSQL advisory lock; store/nodelock.py, store/pg_shared.py), so each
action runs exactly once in the cluster; when the leader dies, the next tick of another process
takes the lock over. The compare-and-swap above stays the backstop.

Only keys that can have work are read: keys in ``destroy_scheduled`` and keys carrying a tag with
``rotation_days``, ``archive_after_days``, ``purge_after_days`` or ``max_key_age_days``. The last
two (end of life: purge archived versions, schedule old keys for destruction, both through dual
control when the key's tags ask for it) are endoflife.py's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from ..auth.permissions import Action
from ..domain.errors import FerroError
from ..domain.model import SYSTEM_CONTEXT, Key, KeyFilter, KeyState, RequestContext, VersionState
from ..store.keystore import KeyStore
from .dualcontrol import DualControl
from .endoflife import EndOfLife, Outcome
from .policy import Policy, Rules

log = logging.getLogger("ferrohsm.scheduler")


class JobKind(StrEnum):
    DESTROY = "destroy"
    ROTATE = "rotate"
    ARCHIVE = "archive"


class Job(NamedTuple):
    kind: JobKind
    key_id: str
    version: int | None = None


def destroy_due(key: Key, now: datetime) -> bool:
    return (key.state is KeyState.DESTROY_SCHEDULED and key.destroy_after is not None
            and key.destroy_after <= now)


def rotation_due(key: Key, rules: Rules, now: datetime) -> bool:
    """Measured from the NEWEST version, so a rollback to an old version does not trigger an
    immediate rotation that would undo it."""
    return (rules.rotation is not None and key.state is KeyState.ACTIVE and bool(key.versions)
            and key.versions[-1].created_at + rules.rotation <= now)


def archivable(key: Key, rules: Rules, now: datetime) -> list[int]:
    """Non-primary enabled versions older than archive_after (the primary is never archived)."""
    if rules.archive_after is None or key.state not in (KeyState.ACTIVE, KeyState.REVOKED):
        return []
    return [v.version for v in key.versions if v.version != key.primary_version
            and v.state is VersionState.ENABLED and v.created_at + rules.archive_after <= now]


def plan(key: Key, rules: Rules, now: datetime) -> list[Job]:
    """What the scheduler should do to ``key`` now. Pure."""
    if destroy_due(key, now):
        return [Job(JobKind.DESTROY, key.id)]
    jobs = [Job(JobKind.ARCHIVE, key.id, v) for v in archivable(key, rules, now)]
    if rotation_due(key, rules, now):
        jobs.append(Job(JobKind.ROTATE, key.id))
    return jobs


class Service(Protocol):
    """The KeyService methods the scheduler drives (each one audits itself)."""

    store: KeyStore
    policy: Policy
    dual: DualControl
    clock: Callable[[], datetime]

    def complete_destroy(self, ctx: RequestContext, key: Key) -> Key: ...
    def scheduled_rotate(self, ctx: RequestContext, key_id: str,
                         due: Callable[[Key], bool]) -> Key: ...
    def archive_version(self, ctx: RequestContext, key_id: str, version: int) -> Key: ...
    def destroy_version(self, ctx: RequestContext, ref: str, version: int, *,
                        audit_action: str | None = None, reason: str = "") -> Key: ...
    def retire(self, ctx: RequestContext, key_id: str, due: Callable[[Key], bool]) -> Key: ...


@dataclass
class TickReport:
    skipped: bool = False  # another tick was still running
    expired: int = 0
    pruned: int = 0
    destroyed: int = 0
    rotated: int = 0
    archived: int = 0
    audit_pruned: int = 0
    failed: int = 0
    purged: int = 0    # versions destroyed: purge_after_days (endoflife.py)
    retired: int = 0   # keys scheduled for destruction: max_key_age_days
    parked: int = 0    # approvals requested by the scheduler for either
    waiting: int = 0   # steps waiting for their approval's quorum
    follower: bool = False  # another process leads: this one did nothing
    settled: int = 0   # intents of dead nodes settled (integrity/livesettle.py)
    held: int = 0      # destructions due, held while their cancellation awaits approval


class RetentionScheduler:
    def __init__(self, service: Service, *, approval_retention_days: float = 0.0,
                 clock: Callable[[], datetime] | None = None,
                 ctx: RequestContext = SYSTEM_CONTEXT,
                 audit_prune: Callable[[datetime], dict[str, Any] | None] | None = None,
                 leader: Callable[[], bool] | None = None,
                 settle: Callable[[], int] | None = None) -> None:
        self.leader = leader  # None: this process is alone on its store
        self.service = service
        self.audit_prune = audit_prune  # the audit sink's retention (writes its own checkpoint)
        self.settle = settle  # the intents of nodes that died (integrity/livesettle.py)
        self.retention = timedelta(days=approval_retention_days) \
            if approval_retention_days > 0 else None
        self.clock = clock or (lambda: service.clock())
        self.ctx = ctx
        self._running = threading.Lock()

    def tick(self, now: datetime | None = None) -> TickReport:
        """One pass; skipped (not queued) when the previous pass is still running."""
        if not self._running.acquire(blocking=False):
            return TickReport(skipped=True)
        if self.leader is not None and not self.leader():
            self._running.release()
            return TickReport(follower=True)
        try:
            return self._pass(now or self.clock())
        finally:
            self._running.release()

    def _pass(self, now: datetime) -> TickReport:
        report = TickReport()
        dual = self.service.dual
        try:
            report.expired = dual.expire_due(self.ctx, now)
            if self.retention is not None:
                report.pruned = dual.prune(self.ctx, now - self.retention)
        except FerroError as exc:  # e.g. audit down: key work is still attempted (and refused)
            report.failed += 1
            log.warning("approval expiry/pruning failed: %s", exc.message)
        self._prune_audit(now, report)
        if self.settle is not None:
            try:
                report.settled = self.settle()
            except Exception:  # never a reason to skip the keys' work
                report.failed += 1
                log.exception("scheduler: settling dead nodes' intents failed")
        for key in self._candidates():
            try:
                for job in plan(key, self.service.policy.rules_for(key), now):
                    self._run(job, key, now, report)
                self._end_of_life(key, now, report)
            except Exception:  # one key's failure must not stop the tick for every other key
                report.failed += 1
                log.exception("scheduler: key %s skipped this tick", key.id)
        return report

    def _end_of_life(self, key: Key, now: datetime, report: TickReport) -> None:
        """purge_after_days and max_key_age_days, through dual control (endoflife.py)."""
        for what, outcome in EndOfLife(self.service, self.ctx).run(key, now):
            if outcome is Outcome.DONE:
                report.retired += what == "retire"
                report.purged += what != "retire"
            else:
                counter = {Outcome.PARKED: "parked", Outcome.WAITING: "waiting"}.get(
                    outcome, "failed")
                setattr(report, counter, getattr(report, counter) + 1)

    def _prune_audit(self, now: datetime, report: TickReport) -> None:
        """Audit retention: the sink deletes old records and, in the same transaction, appends a
        checkpoint record (first/last pruned seq, count, last hash) so the rest still verifies."""
        if self.audit_prune is None:
            return
        try:
            checkpoint = self.audit_prune(now)
        except FerroError as exc:
            report.failed += 1
            log.warning("audit pruning failed: %s", exc.message)
            return
        if checkpoint:
            report.audit_pruned = int(checkpoint.get("details", {}).get("count", 0))

    def _candidates(self) -> Iterator[Key]:
        """Each key that may have work, once: scheduled destructions, then scheduled tags."""
        seen: set[str] = set()
        filters = [KeyFilter(state=KeyState.DESTROY_SCHEDULED)]
        filters += [KeyFilter(tag=t) for t in self.service.policy.scheduled_tags]
        for f in filters:
            for key in self.service.store.walk(f):
                if key.id not in seen:
                    seen.add(key.id)
                    yield key

    def _run(self, job: Job, key: Key, now: datetime, report: TickReport) -> None:
        """Run one job; a failure is logged and counted, and never stops the tick."""
        svc, policy = self.service, self.service.policy
        try:
            if job.kind is JobKind.DESTROY:
                if svc.dual.open_on(key.id, Action.KEY_CANCEL_DESTROY, now):
                    report.held += 1  # until the approval is decided or expires
                    return
                svc.complete_destroy(self.ctx, key)
                report.destroyed += 1
            elif job.kind is JobKind.ROTATE:
                svc.scheduled_rotate(self.ctx, key.id,
                                     lambda k: rotation_due(k, policy.rules_for(k), now))
                report.rotated += 1
            else:
                assert job.version is not None
                svc.archive_version(self.ctx, key.id, job.version)
                report.archived += 1
        except FerroError as exc:
            report.failed += 1
            log.warning("scheduled %s of key %s failed: %s", job.kind.value, key.id, exc.message)

    def start(self, stop: threading.Event, interval: float) -> threading.Thread:
        """Tick every ``interval`` seconds until ``stop`` is set, in a daemon thread."""
        def loop() -> None:
            while not stop.wait(interval):
                try:
                    report = self.tick()
                except FerroError as exc:  # the store or audit log unavailable: said, no trace
                    log.warning("scheduler tick failed: %s", exc.message)
                    continue
                except Exception:
                    log.exception("scheduler tick failed")
                    continue
                if report.failed:
                    log.warning("scheduler tick: %s", report)
        thread = threading.Thread(target=loop, name="ferrohsm-scheduler", daemon=True)
        thread.start()
        return thread
