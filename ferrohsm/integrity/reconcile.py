"""Start-up reconciliation: settle every unsettled change, and refuse a key no record explains.

Every change is recorded before it is applied and settled after (control/recordfirst.py), so a
crash (or a settling record that could not be written, which fails the audit log until a
restart) can leave an INTENT that nobody settled. app.py runs ``reconcile`` after opening the
store and the audit log and before serving; it reads the log once (changelog.py) and the store
once, and then, per key:

* an unsettled intent is COMPLETED (a ``success`` record, "completed at start-up") when the
  stored record is bound to it (``audit_seq``/``audit_hash`` name it) or when a later confirmed
  change builds on it (its ``from_seq``); otherwise it is ROLLED BACK ("not applied before a
  crash"), also when the key it would have created is not in the store;
* the stored record must then be bound to the key's latest confirmed change, with the hash of
  that record and the digest that change announced. START-UP IS REFUSED, naming the keys, for a
  record bound to an OLDER confirmed change (an older, validly authenticated copy put back), to
  a seq the log does not hold as a change of that key, or that differs from what its change
  wrote, and for a key in the store whose creation the log never recorded. With
  ``accept_unrecorded`` (``serve --accept-unrecorded``, for one start) each such record is bound
  as it is instead, by a ``store.bound`` change whose records name what was accepted, and one
  ``integrity.unrecorded_accepted`` record sums it up;
* a record written before bindings existed (``audit_seq`` 0) is bound once to the key's latest
  change recorded the old way (a ``store.bound`` change, so an upgraded data directory starts),
  and refused when the log has none. A record bound to a seq older than the first one the log
  still holds (retention) cannot be checked and is accepted while the log holds no later change.

Unsettled approval transitions are completed when the approval store holds the transition's
target revision (or a later one), and rolled back otherwise.

Keys the log created but the store lost are not this check's business (a missing record is not
an unrecorded one); neither is an audit log cut back behind the store beyond noticing a binding
to a seq it does not hold.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from ..audit.chain import AuditEvent, DetailValue
from ..audit.sinkbase import AuditSink
from ..domain import binding
from ..domain.approval import Approval
from ..domain.errors import FerroError, NotFound
from ..domain.model import Key
from ..store.approvalstore import ApprovalStore
from ..store.keystore import KeyStore
from .changelog import ApprovalChange, Change, ChangeLog, KeyHistory, read_changes, sink_lines
from .logcheck import StartupRefused

log = logging.getLogger("ferrohsm.integrity")

SYSTEM = "system"
ACCEPTED_ACTION = "integrity.unrecorded_accepted"
MAX_NAMED = 20
BIND_BATCH = 1000  # keys bound per pair of group commits


@dataclass(frozen=True, slots=True)
class Settle:
    intent: Change | ApprovalChange
    applied: bool
    why: str


@dataclass(frozen=True, slots=True)
class Binding:
    """A ``store.bound`` change to make: ``key`` bound as it is stored."""

    key: Key
    why: str
    bound_to: int = 0  # the old-style change record it stands for (upgrade)


@dataclass(frozen=True, slots=True)
class Problem:
    key: Key
    why: str


@dataclass
class Plan:
    settle: list[Settle] = field(default_factory=list)
    bind: list[Binding] = field(default_factory=list)
    refuse: list[Problem] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Report:
    completed: int = 0
    rolled_back: int = 0
    bound: int = 0
    accepted: int = 0
    # the token revocations the log holds (ChangeLog.revoked), for the deny-list's start-up
    # check (Authenticator.restore_revocations); not a finding, so not compared
    revoked: tuple[tuple[str, float | None, float], ...] = field(default=(), compare=False,
                                                                 repr=False)
    # approval id -> the newest revision the log confirms (DualControl.seen), and key id ->
    # its latest confirmed change (KeyStore.note_binding): not findings
    approval_revisions: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    key_bindings: dict[str, int] = field(default_factory=dict, compare=False, repr=False)


# ---- deciding (pure but for reading the stores) -------------------------------------------

def plan_keys(changes: ChangeLog, keys: Iterator[Key],
              lookup: Callable[[str], Key | None]) -> Plan:
    """What to do for every key in the store and every key with an unsettled intent."""
    plan, seen = Plan(), set()
    pending = changes.open_keys()
    for key in keys:
        seen.add(key.id)
        _plan_key(plan, changes, key.id, key, pending.get(key.id, []))
    for key_id, intents in pending.items():
        if key_id in seen:
            continue
        try:
            stored = lookup(key_id)
        except FerroError as exc:  # e.g. a record that fails its check: left for a later start
            log.error("integrity: change(s) of key %s left unsettled: its record cannot be read "
                      "(%s)", key_id, exc.message)
            continue
        _plan_key(plan, changes, key_id, stored, intents)
    return plan


def _plan_key(plan: Plan, changes: ChangeLog, key_id: str, stored: Key | None,
              intents: list[Change]) -> None:
    history = changes.keys.get(key_id) or KeyHistory()
    latest, confirmed, built = history.latest, set(history.confirmed), dict(history.built)
    for intent in intents:
        settle = settle_key(stored, intent, changes.built_on)
        plan.settle.append(settle)
        if settle.applied:
            confirmed.add(intent.seq)
            built[intent.seq] = (intent.from_seq, intent.action)
            latest = intent if latest is None or intent.seq > latest.seq else latest
    if stored is None:
        return
    verdict = _check_binding(stored, latest, confirmed, history.legacy, changes.first_seq)
    if verdict is None:
        verdict = _fork(stored, built)
    if isinstance(verdict, Binding):
        plan.bind.append(verdict)
    elif isinstance(verdict, Problem):
        plan.refuse.append(verdict)


def settle_key(stored: Key | None, intent: Change, built_on: set[int],
               when: str = "at start-up") -> Settle:
    """``when``: at start-up, or once the node that made the change died (livesettle.py)."""
    if stored is not None and binding.is_bound_to(stored, intent.seq, intent.hash):
        return Settle(intent, True, f"completed {when}: the key store holds the record "
                      "this change wrote")
    if intent.seq in built_on:
        return Settle(intent, True, f"completed {when}: a later recorded change of the key "
                      "builds on it")
    where = "the key is not in the key store" if stored is None else \
        "the key store holds the record from before it"
    crash = "a crash" if when == "at start-up" else "its node died"
    return Settle(intent, False, f"not applied before {crash}: {where}")


def _check_binding(stored: Key, latest: Change | None, confirmed: set[int],
                   legacy: tuple[int, str] | None, first_seq: int) -> Binding | Problem | None:
    """None when ``stored`` is bound to the latest confirmed change of its key and is what that
    change wrote; a Binding to make (upgrade); or the Problem."""
    seq = stored.audit_seq
    if seq == 0:
        return _unbound(stored, latest, legacy, first_seq)
    if latest is not None and seq == latest.seq:
        if stored.audit_hash != latest.hash or binding.record_digest(stored) != latest.digest:
            return Problem(stored, f"is bound to its latest recorded change (seq {seq}) but is "
                           "not the record that change wrote")
        return None
    if latest is not None and seq in confirmed:
        return Problem(stored, f"is an older copy of its record (put back, or a later write "
                       f"the store lost): bound to its change at seq {seq}, but the log's latest "
                       f"change of this key is seq {latest.seq}")
    if latest is None and 0 < seq < first_seq:
        return None  # its records were pruned (retention): nothing left to compare with
    return Problem(stored, f"is bound to audit record seq {seq}, which the log does not hold "
                   "as a change of this key")


def _fork(stored: Key, built: dict[int, tuple[int, str]]) -> Problem | None:
    """A change made to an older copy put back binds the copy to a new change, which hides it
    from the binding check; the revocation or destruction it undid is in the log
    (binding.forks). One an operator accepted since (--accept-unrecorded) is not refused."""
    pending = [fork for fork in binding.forks(built) if not fork[3]]
    if not pending:
        return None
    seq, from_seq, previous, _ = pending[-1]
    return Problem(stored, f"has a forked history: its change at seq {seq} was made to an "
                   f"older copy of its record (bound to seq {from_seq}) put back after its "
                   f"change at seq {previous}")


def _unbound(stored: Key, latest: Change | None, legacy: tuple[int, str] | None,
             first_seq: int) -> Binding | Problem:
    if latest is not None:
        return Problem(stored, f"is bound to no recorded change, but the log's latest change "
                       f"of this key is seq {latest.seq}")
    if legacy is not None:
        return Binding(stored, f"bound at start-up to its latest change (seq {legacy[0]}), "
                       "recorded before changes were bound to their records", legacy[0])
    if first_seq > 1:
        return Binding(stored, "bound at start-up: written before changes were bound to their "
                       "records, whose records retention has pruned")
    return Problem(stored, "is in the key store, but the audit log never recorded its creation")


def plan_approvals(plan: Plan, intents: list[ApprovalChange],
                   approvals: ApprovalStore | None,
                   done: set[tuple[str, int]] | frozenset[tuple[str, int]] = frozenset(),
                   when: str = "at start-up") -> None:
    """An approval transition is applied when the store holds its target revision as this
    intent's change (``change_seq``). Several requests may have intended the same revision at
    once (twenty concurrent executions, votes), a crash before the losers recorded that they
    lost: only the one the stored revision names was applied. Once the store is past that
    revision, it was applied unless another intent's success for it is recorded (``done``) or
    several open intents share it (which one won cannot be told then: none is claimed). A
    revision stored by an older version names no intent: then the revision alone decides."""
    sharing = Counter((i.approval_id, i.target_revision) for i in intents)
    for intent in intents:
        try:
            found = approvals.get(intent.approval_id) if approvals is not None else None
        except NotFound:
            found = None
        pair = (intent.approval_id, intent.target_revision)
        plan.settle.append(Settle(intent, *_approval_applied(intent, found, pair in done,
                                                             sharing[pair], when)))


def _approval_applied(intent: ApprovalChange, found: Approval | None, other_done: bool,
                      sharing: int, when: str) -> tuple[bool, str]:
    """(applied, why) for plan_approvals."""
    crash = "a crash" if when == "at start-up" else "its node died"
    applied, unknown = False, False
    if found is not None and found.revision == intent.target_revision:
        applied = found.change_seq in (0, intent.seq)
    elif found is not None and found.revision > intent.target_revision:
        applied = not other_done and sharing == 1
        unknown = not other_done and sharing > 1
    if applied:
        return True, f"completed {when}: the approval store holds this transition"
    if unknown:
        return False, (f"not known to be applied: {sharing} requests intended this transition "
                       f"before {crash} and the approval store has moved on since; at most one "
                       "of them was")
    return False, (f"not applied before {crash}: the approval store does not hold this "
                   "transition")


# ---- acting ---------------------------------------------------------------------------------

def reconcile(store: KeyStore, sink: AuditSink, hmac_key: bytes, *,
              approvals: ApprovalStore | None = None,
              accept_unrecorded: bool = False) -> Report:
    """Settle, check and bind (module docstring); StartupRefused names what is unexplained."""
    changes = read_changes(sink_lines(sink), hmac_key, sink.head()[0])
    plan = plan_keys(changes, store.walk(), lambda key_id: lookup_key(store, key_id))
    plan_approvals(plan, changes.open_approvals(), approvals, changes.approvals_done)
    if plan.refuse and not accept_unrecorded:
        raise StartupRefused(refusal(plan.refuse))
    for settle in plan.settle:
        append_settlement(sink, settle)
    accepted = [Binding(p.key, f"accepted (--accept-unrecorded): the record {p.why}")
                for p in plan.refuse]
    bind_keys(store, sink, plan.bind + accepted)
    if accepted:
        ids = named([p.key.id for p in plan.refuse])
        _append(sink, ACCEPTED_ACTION, binding.SUCCESS,
                f"{len(accepted)} key record(s) without an audit record that explains them "
                f"served as they are (--accept-unrecorded): {ids}", count=len(accepted))
    report = Report(completed=sum(s.applied for s in plan.settle),
                    rolled_back=sum(not s.applied for s in plan.settle),
                    bound=len(plan.bind), accepted=len(accepted),
                    revoked=tuple(changes.revoked),
                    approval_revisions=newest_revisions(changes.approvals_done),
                    key_bindings=changes.newest_bindings())
    if report != Report():
        log.warning("integrity: start-up reconciliation: %s", report)
    return report


def newest_only(sink: AuditSink, hmac_key: bytes) -> Report:
    """For a node joining live ones, which settles nothing: what the log says is newest, per
    key and per approval (a read of its change records, each authenticated; about a third of
    a cold start's reading)."""
    changes = read_changes(sink_lines(sink), hmac_key, sink.head()[0], walk_chain=False)
    return Report(approval_revisions=newest_revisions(changes.approvals_done),
                  key_bindings=changes.newest_bindings())


def newest_revisions(done: set[tuple[str, int]]) -> dict[str, int]:
    """Per approval, the latest revision a recorded transition made."""
    newest: dict[str, int] = {}
    for approval_id, revision in done:
        newest[approval_id] = max(revision, newest.get(approval_id, 0))
    return newest


def refusal(problems: list[Problem]) -> str:
    shown = "; ".join(f"key {p.key.id} {p.why}" for p in problems[:MAX_NAMED])
    more = len(problems) - MAX_NAMED
    return (f"{len(problems)} key record(s) in the key store have no audit record that explains "
            f"them: {shown}{f'; and {more} more' if more > 0 else ''}. Restore the key store and "
            "the audit log from one consistent backup; or, to serve these records as they are, "
            "start once with --accept-unrecorded (each one is recorded as store.bound)")


def named(ids: list[str]) -> str:
    more = len(ids) - MAX_NAMED
    return ", ".join(ids[:MAX_NAMED]) + (f" and {more} more" if more > 0 else "")


def bind_keys(store: KeyStore, sink: AuditSink, bindings: list[Binding]) -> None:
    """``store.bound`` changes, record first like any other (control/recordfirst.py), the records
    of ``BIND_BATCH`` keys at a time in one group commit (an upgraded data directory binds every
    key once). A write that fails is recorded as rolled back, and start-up stops."""
    for start in range(0, len(bindings), BIND_BATCH):
        batch = bindings[start:start + BIND_BATCH]
        targets = [binding.planned(b.key, b.key.revision + 1) for b in batch]
        intents = sink.append_group([_bind_intent(b, t)
                                     for b, t in zip(batch, targets, strict=True)])
        settlements, failed = [], None
        for bind, target, intent in zip(batch, targets, intents, strict=True):
            seq, digest = int(intent["seq"]), str(intent["hash"])
            try:
                stored = store.update(replace(binding.bind(target, seq, digest),
                                              revision=bind.key.revision))
            except FerroError as exc:
                failed = failed or exc
                settlements.append(_event(binding.BIND_ACTION, binding.ROLLED_BACK,
                                          f"not applied: {exc.message}", target.id,
                                          **{binding.INTENT_SEQ: seq}))
                continue
            settlements.append(_event(binding.BIND_ACTION, binding.SUCCESS, bind.why, stored.id,
                                      stored.primary_version, **{binding.INTENT_SEQ: seq}))
        sink.append_group(settlements)
        if failed is not None:
            raise failed


def _bind_intent(bind: Binding, target: Key) -> AuditEvent:
    details: dict[str, DetailValue] = dict(binding.intent_details(target, bind.key.audit_seq))
    if bind.bound_to:
        details["bound_to"] = bind.bound_to
    return _event(binding.BIND_ACTION, binding.INTENT, f"intent: {bind.why}", target.id,
                  target.primary_version, **details)


def append_settlement(sink: AuditSink, settle: Settle) -> None:
    intent = settle.intent
    outcome = binding.SUCCESS if settle.applied else binding.ROLLED_BACK
    version = intent.key_version if isinstance(intent, Change) else None
    extra: dict[str, DetailValue] = {} if isinstance(intent, Change) \
        else {"approval_id": intent.approval_id}
    _append(sink, intent.action, outcome, settle.why, intent.key_id, version,
            **{binding.INTENT_SEQ: intent.seq}, **extra)


def _event(action: str, outcome: str, message: str, key_id: str | None = None,
           version: int | None = None, **details: DetailValue) -> AuditEvent:
    return AuditEvent(actor=SYSTEM, role=SYSTEM, action=action, outcome=outcome,
                      message=message, key_id=key_id, key_version=version, details=details)


def _append(sink: AuditSink, action: str, outcome: str, message: str,
            key_id: str | None = None, version: int | None = None,
            **details: DetailValue) -> None:
    sink.append(_event(action, outcome, message, key_id, version, **details))


def lookup_key(store: KeyStore, key_id: str) -> Key | None:
    try:
        return store.get(key_id)
    except NotFound:
        return None
