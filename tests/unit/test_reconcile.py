"""Start-up reconciliation (integrity/reconcile.py) on real stores and sinks: an intent a crash
left unsettled is completed when the store holds its record (or a later change builds on it) and
rolled back when it does not; a replayed older copy, a binding to a seq the log lacks, a record
that is not what its change wrote and a key whose creation was never recorded refuse start-up
(or are bound, audited, with accept_unrecorded); an old data directory is bound once."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, overload

import pytest

from ferrohsm.audit.chain import AuditEvent
from ferrohsm.audit.sinkbase import ChainedSink, Ticket
from ferrohsm.audit.sinks import FileSink, SQLiteSink
from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.crypto.seal import Sealer
from ferrohsm.domain import approval as apv
from ferrohsm.domain import binding
from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.errors import IntegrityError
from ferrohsm.domain.ids import uuid7
from ferrohsm.domain.model import Key, Principal, RequestContext, Role
from ferrohsm.engine.keycache import MaterialCache
from ferrohsm.engine.keyengine import KeyEngine
from ferrohsm.integrity.changelog import ApprovalChange, ChangeLog
from ferrohsm.integrity.logcheck import StartupRefused
from ferrohsm.integrity.reconcile import (
    Plan,
    Report,
    _fork,
    newest_only,
    newest_revisions,
    plan_approvals,
    reconcile,
)
from ferrohsm.service import KeyService
from ferrohsm.store.filesystem import FilesystemStore
from ferrohsm.store.memory_approvals import MemoryApprovalStore

RECORD_MAC = RecordMac.derive(bytes(32))  # record MACs under a test master key

HMAC_KEY = hashlib.sha256(b"reconcile test audit key").digest()
ALICE = RequestContext(Principal("alice", Role.ADMINISTRATOR), request_id="req")
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class Crash(BaseException):
    """kill -9 at a chosen step: nothing after it runs, not even an except FerroError."""


class CrashingAudit:
    """The real sink, with a kill before the first record of ``outcome`` (when armed)."""

    def __init__(self, sink: ChainedSink) -> None:
        self.sink = sink
        self.crash_on: str | None = None

    @overload
    def append(self, event: AuditEvent, *, durable: Literal[True] = ...) -> dict[str, Any]: ...
    @overload
    def append(self, event: AuditEvent, *, durable: Literal[False]) -> Ticket: ...
    def append(self, event: AuditEvent, *, durable: bool = True) -> dict[str, Any] | Ticket:
        if event.outcome == self.crash_on:
            self.crash_on = None
            raise Crash
        return self.sink.append(event, durable=durable)

    def healthy(self) -> bool:
        return self.sink.healthy()

    def fail_closed(self, reason: str) -> None:
        self.sink.fail_closed(reason)

    def fail_until_recorded(self, reason: str,
                            settle: AuditEvent | Callable[[], AuditEvent]) -> None:
        self.sink.fail_until_recorded(reason, settle)


class CrashingStore(FilesystemStore):
    """A kill just before a write reaches the store (when armed)."""

    crash_next = False

    def update(self, key: Key) -> Key:
        if self.crash_next:
            self.crash_next = False
            raise Crash
        return super().update(key)

    def create(self, key: Key) -> Key:
        if self.crash_next:
            self.crash_next = False
            raise Crash
        return super().create(key)


@dataclass
class Data:
    """A data directory: its store, its audit log, a service over both; ``restart`` reopens."""

    path: Path
    sink_kind: str
    store: CrashingStore
    sink: ChainedSink
    audit: CrashingAudit
    svc: KeyService

    @classmethod
    def open(cls, path: Path, sink_kind: str = "file") -> Data:
        store = CrashingStore(path / "keys", RECORD_MAC)
        sink: ChainedSink = FileSink(path / "audit", HMAC_KEY) if sink_kind == "file" \
            else SQLiteSink(path / "audit.sqlite3", HMAC_KEY)
        audit = CrashingAudit(sink)
        engine = KeyEngine(Sealer(bytes(range(32))), MaterialCache(64, 300))
        opened = cls(path, sink_kind, store, sink, audit, KeyService(store, engine, audit))
        OPENED.append(opened)
        return opened

    def restart(self, accept_unrecorded: bool = False) -> tuple[Data, Report]:
        """Close, reopen and reconcile, as app.py does before serving."""
        self.sink.close()
        self.store.close()
        again = Data.open(self.path, self.sink_kind)
        try:
            report = reconcile(again.store, again.sink, HMAC_KEY,
                               accept_unrecorded=accept_unrecorded)
        except BaseException:
            again.close()  # as a refused start-up does
            raise
        return again, report

    def records(self, key_id: str) -> list[dict[str, Any]]:
        return [r for r in self.sink.read(0, 100_000) if r["key_id"] == key_id]

    def close(self) -> None:
        self.sink.close()
        self.store.close()

    def create(self) -> Key:
        return self.svc.create_key(ALICE, algorithm="aes-256-gcm", usage="encrypt")


OPENED: list[Data] = []


@pytest.fixture(autouse=True)
def close_all() -> Iterator[None]:
    yield
    while OPENED:  # every copy a test opened, whatever it left open (close is idempotent)
        OPENED.pop().close()


@pytest.fixture
def data(tmp_path: Path) -> Data:
    return Data.open(tmp_path)


def settled(records: list[dict[str, Any]], intent_seq: int) -> list[str]:
    return [r["outcome"] for r in records
            if (r["details"] or {}).get(binding.INTENT_SEQ) == intent_seq]


def intents(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["outcome"] == "intent"]


@pytest.mark.parametrize("sink_kind", ["file", "sqlite"])
def test_an_intent_the_store_holds_is_completed_at_start_up(tmp_path: Path,
                                                            sink_kind: str) -> None:
    data = Data.open(tmp_path, sink_kind)
    key = data.create()
    data.audit.crash_on = "success"  # killed after the store write, before the confirmation
    with pytest.raises(Crash):
        data.svc.rotate(ALICE, key.id)
    data, report = data.restart()
    assert report == Report(completed=1)
    stored = data.store.get(key.id)
    intent = intents(data.records(key.id))[-1]
    assert len(stored.versions) == 2 and stored.audit_seq == intent["seq"]
    assert settled(data.records(key.id), intent["seq"]) == ["success"]
    done = data.records(key.id)[-1]
    assert (done["action"], done["key_version"]) == ("key.rotate", 2)
    assert "completed at start-up" in done["message"]
    assert data.restart()[1] == Report()  # settled once


def test_an_intent_the_store_never_saw_is_rolled_back(data: Data) -> None:
    key = data.create()
    data.store.crash_next = True  # killed after the intent, before the store write
    with pytest.raises(Crash):
        data.svc.rotate(ALICE, key.id)
    data, report = data.restart()
    assert report == Report(rolled_back=1)
    assert len(data.store.get(key.id).versions) == 1
    intent = intents(data.records(key.id))[-1]
    assert settled(data.records(key.id), intent["seq"]) == ["rolled_back"]
    assert "not applied before a crash" in data.records(key.id)[-1]["message"]


def test_a_creation_the_store_never_saw_is_rolled_back(data: Data) -> None:
    data.store.crash_next = True
    with pytest.raises(Crash):
        data.create()
    [intent] = [r for r in data.sink.read(0, 1000) if r["outcome"] == "intent"]
    data, report = data.restart()
    assert report == Report(rolled_back=1) and data.store.count() == 0
    assert settled(data.records(intent["key_id"]), intent["seq"]) == ["rolled_back"]


def test_an_open_intent_a_later_change_builds_on_is_completed(data: Data) -> None:
    key = data.create()
    data.audit.crash_on = "success"  # rotation 1 applied but never confirmed...
    with pytest.raises(Crash):
        data.svc.rotate(ALICE, key.id)
    data.svc.rotate(ALICE, key.id)  # ...and rotation 2, confirmed, built on it
    first = intents(data.records(key.id))[-2]
    data, report = data.restart()
    assert report == Report(completed=1)
    assert settled(data.records(key.id), first["seq"]) == ["success"]
    assert len(data.store.get(key.id).versions) == 3


def refused_then_accepted(data: Data, key_id: str, why: str) -> Data:
    """Start-up refuses, naming the key and ``why``; then --accept-unrecorded binds it once."""
    with pytest.raises(StartupRefused) as refused:
        data.restart()
    assert key_id in refused.value.message and why in refused.value.message
    data, report = Data.open(data.path).restart(accept_unrecorded=True)
    assert report == Report(accepted=1)
    return data


def test_a_replayed_older_copy_is_refused_then_accepted_once(data: Data) -> None:
    key = data.create()
    old = data.store.get(key.id)  # an authentic copy of the record...
    data.svc.rotate(ALICE, key.id)
    data.store.update(replace(old, revision=data.store.get(key.id).revision))  # ...put back
    data = refused_then_accepted(data, key.id, "older copy")
    bound = [r for r in data.records(key.id) if r["action"] == binding.BIND_ACTION]
    assert [r["outcome"] for r in bound] == ["intent", "success"]
    assert "accepted (--accept-unrecorded)" in bound[-1]["message"]
    assert data.store.get(key.id).audit_seq == bound[0]["seq"]
    assert any(r["action"] == "integrity.unrecorded_accepted" for r in data.sink.read(0, 1000))
    assert data.restart()[1] == Report()  # accepted once, for good


def test_a_change_made_to_an_older_copy_put_back_is_a_fork_refused_at_start_up(
        data: Data) -> None:
    """An older copy put back and then changed by a process that never served the newer one:
    the record is bound to that new change, so only the history's fork shows it."""
    key = data.create()
    old = data.store.get(key.id)
    data.svc.revoke(ALICE, key.id)
    data.store.update(replace(old, revision=data.store.get(key.id).revision))  # put back
    data.close()
    data = Data.open(data.path)  # another process: it never served the revoked record
    data.svc.update_key(ALICE, key.id, "laundered")  # the copy, bound to a new change
    data = refused_then_accepted(data, key.id, "forked history")
    assert data.restart()[1] == Report()  # accepted once, for good


def test_a_line_of_changes_starts_over_at_a_binding_or_a_restore(data: Data) -> None:
    """Concurrent writers never fork a key's line (a change that lost its race is rolled
    back); a store.bound change or a restore from a backup (in a new log) starts it over."""
    key = data.create()
    line = {2: (0, "key.create"), 5: (2, "key.rotate"), 9: (5, "key.revoke")}
    assert _fork(key, line) is None
    assert _fork(key, {**line, 12: (5, "key.update")}) is not None  # built on 5 after 9
    for restart in ("store.bound", "key.restore"):
        assert _fork(key, {**line, 12: (5, "key.update"), 14: (0, restart),
                           15: (14, "key.rotate")}) is None


def test_a_process_that_served_the_newer_record_refuses_the_older_copy(data: Data) -> None:
    key = data.create()
    old = data.store.get(key.id)
    data.svc.revoke(ALICE, key.id)
    assert data.svc.get_key(ALICE, key.id).state.value == "revoked"
    data.store.update(replace(old, revision=data.store.get(key.id).revision))  # put back
    with pytest.raises(IntegrityError, match="older copy"):
        data.svc.get_key(ALICE, key.id)
    with pytest.raises(IntegrityError, match="older copy"):
        data.svc.update_key(ALICE, key.id, "laundered")


def test_the_process_that_made_a_change_refuses_an_older_copy_without_reading_it_since(
        data: Data) -> None:
    """Revoked, then at once the record of before put back: no read came between."""
    key = data.create()
    old = data.store.get(key.id)
    data.svc.revoke(ALICE, key.id)
    data.store.update(replace(old, revision=data.store.get(key.id).revision))  # put back
    with pytest.raises(IntegrityError, match="older copy"):
        data.svc.get_key(ALICE, key.id)


def test_a_node_that_joins_learns_what_is_newest_from_the_log(data: Data) -> None:
    """A joining node settles nothing, but reads the change records: a key's latest change and
    an approval's latest revision, as the cold start's reading gives them; an older copy put
    back is then refused by a process that never served the newer record."""
    key = data.create()
    data.svc.rotate(ALICE, key.id)
    old = data.store.get(key.id)
    revoked = data.svc.revoke(ALICE, key.id)
    data, report = data.restart()  # its store has served nothing yet
    joined = newest_only(data.sink, HMAC_KEY)
    assert joined.key_bindings == report.key_bindings == {key.id: revoked.audit_seq}
    assert joined.approval_revisions == report.approval_revisions == {}
    data.store.update(replace(old, revision=data.store.get(key.id).revision))  # put back
    for key_id, seq in joined.key_bindings.items():
        data.store.note_binding(key_id, seq)
    with pytest.raises(IntegrityError, match="older copy"):
        data.store.resolve(key.id)


def test_a_key_whose_creation_was_never_recorded_is_refused(data: Data) -> None:
    data.create()
    stray = data.store.create(lc.new_key(key_id=uuid7(), name=None, description="",
                                         algorithm="aes-256-gcm", usage="encrypt", tags=(),
                                         sealed=os.urandom(60), now=NOW, actor="nobody"))
    with pytest.raises(StartupRefused) as refused:
        data.restart()
    assert stray.id in refused.value.message
    assert "never recorded its creation" in refused.value.message


def test_a_binding_to_a_seq_the_log_lacks_is_refused(data: Data) -> None:
    key = data.create()
    current = data.store.get(key.id)
    data.store.update(replace(current, audit_seq=current.audit_seq + 10_000))
    with pytest.raises(StartupRefused) as refused:
        data.restart()
    assert f"{key.id} is bound to audit record seq" in refused.value.message


def test_a_record_that_is_not_what_its_change_wrote_is_refused(data: Data) -> None:
    key = data.create()
    current = data.store.get(key.id)  # the binding kept, the contents edited
    data.store.update(replace(current, description="edited behind the service's back"))
    with pytest.raises(StartupRefused) as refused:
        data.restart()
    assert "not the record that change wrote" in refused.value.message


def test_an_old_data_dir_is_bound_once_at_start_up(data: Data) -> None:
    """Records written before bindings (audit_seq 0) beside their old-style success records."""
    old = data.store.create(lc.new_key(key_id=uuid7(), name="legacy", description="",
                                       algorithm="aes-256-gcm", usage="encrypt", tags=(),
                                       sealed=os.urandom(60), now=NOW, actor="alice"))
    created = data.sink.append(AuditEvent(actor="alice", role="administrator",
                                          action="key.create", outcome="success",
                                          message="created", key_id=old.id, key_version=1))
    assert created is not None and old.audit_seq == 0
    data, report = data.restart()
    assert report == Report(bound=1)
    bound = [r for r in data.records(old.id) if r["action"] == binding.BIND_ACTION]
    assert [r["outcome"] for r in bound] == ["intent", "success"]
    assert bound[0]["details"]["bound_to"] == created["seq"]
    stored = data.store.get(old.id)
    assert (stored.audit_seq, stored.audit_hash) == (bound[0]["seq"], bound[0]["hash"])
    data.svc.rotate(ALICE, old.id)  # and it changes like any other key from then on
    assert data.restart()[1] == Report()


def test_an_approval_transition_is_settled_from_the_approval_store() -> None:
    store = MemoryApprovalStore()
    created = store.create(apv.new_approval(
        approval_id=uuid7(), action="key.rotate", key_id=uuid7(), args={}, salt=b"s" * 16,
        requester="alice", required=2, now=NOW, expires_at=NOW + timedelta(hours=1)))
    requested = ApprovalChange(7, "ab" * 32, created.key_id, "approval.requested", created.id,
                               "pending", 1)
    voted = ApprovalChange(9, "cd" * 32, created.key_id, "approval.approved", created.id,
                           "pending", 2)
    missing = replace(requested, seq=11, approval_id=uuid7())
    plan = Plan()
    plan_approvals(plan, [requested, voted, missing], store)
    assert [(s.intent.seq, s.applied) for s in plan.settle] == [(7, True), (9, False),
                                                                 (11, False)]


def test_of_concurrent_intents_for_one_revision_only_the_stored_one_was_applied() -> None:
    """Twenty executions of one approval at once, then a crash: each wrote its intent for the
    same revision, one was stored, and the losers had not yet recorded that they lost. Every
    one of them was settled as a success, so the log said the approval ran six times (an
    outside tester). The stored revision names its intent: only that one was applied."""
    store = MemoryApprovalStore()
    created = store.create(apv.new_approval(
        approval_id=uuid7(), action="key.rotate", key_id=uuid7(), args={}, salt=b"s" * 16,
        requester="alice", required=1, now=NOW, expires_at=NOW + timedelta(hours=1)))
    store.swap(replace(created, state=apv.ApprovalState.EXECUTED, change_seq=124))
    executions = [ApprovalChange(seq, "ab" * 32, created.key_id, "approval.executed",
                                 created.id, "executed", 2) for seq in (120, 124, 128)]
    plan = Plan()
    plan_approvals(plan, executions, store)
    assert [(s.intent.seq, s.applied) for s in plan.settle] == [(120, False), (124, True),
                                                                 (128, False)]
    assert apv.from_record(apv.to_record(store.get(created.id))).change_seq == 124
    older = apv.to_record(created)  # stored before revisions named their intent
    assert "change_seq" not in older and apv.from_record(older).change_seq == 0



def test_a_losing_intent_is_not_applied_once_the_approval_moved_on() -> None:
    """Two votes raced for revision 2 (124 won and its success is recorded), a third vote made
    revision 3, then a crash before the loser (120) recorded that it lost: the loser was
    settled as applied because the store was past its revision (an outside tester)."""
    store = MemoryApprovalStore()
    created = store.create(apv.new_approval(
        approval_id=uuid7(), action="key.rotate", key_id=uuid7(), args={}, salt=b"s" * 16,
        requester="alice", required=3, now=NOW, expires_at=NOW + timedelta(hours=1)))
    second = store.swap(replace(created, change_seq=124))
    store.swap(replace(second, change_seq=130))
    loser = ApprovalChange(120, "ab" * 32, created.key_id, "approval.approved", created.id,
                           "pending", 2)
    plan = Plan()
    plan_approvals(plan, [loser], store, {(created.id, 2)})
    assert [(s.intent.seq, s.applied) for s in plan.settle] == [(120, False)]
    plan = Plan()  # nobody's success recorded for revision 2: the one open intent made it
    plan_approvals(plan, [loser], store)
    assert [(s.intent.seq, s.applied) for s in plan.settle] == [(120, True)]
    plan = Plan()  # two open intents for it, none recorded: which won cannot be told
    plan_approvals(plan, [loser, replace(loser, seq=121)], store)
    assert [s.applied for s in plan.settle] == [False, False]
    assert "at most one of them" in plan.settle[0].why


def test_the_change_log_lists_approval_transitions_whose_success_is_recorded() -> None:
    log = ChangeLog()
    details = {"approval_id": "a1", binding.TARGET_REVISION: 2}
    log.add({"seq": 5, "hash": "h5", "action": "approval.approved", "outcome": binding.INTENT,
             "key_id": None, "details": details})
    log.add({"seq": 6, "hash": "h6", "action": "approval.approved", "outcome": binding.INTENT,
             "key_id": None, "details": details})
    log.add({"seq": 7, "action": "approval.approved", "outcome": binding.SUCCESS,
             "details": {binding.INTENT_SEQ: 5}})
    assert log.approvals_done == {("a1", 2)}
    assert [i.seq for i in log.open_approvals()] == [6]
    log.approvals_done.add(("a1", 4))
    assert newest_revisions(log.approvals_done) == {"a1": 4}  # what a cold start hands on
