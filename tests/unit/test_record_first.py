"""Record first, apply second, confirm third (service/changes.py, control/recordfirst.py): the
records each outcome of a key's store write leaves, and what the stored record is bound to."""

from __future__ import annotations

import time
from typing import Any, Literal, overload

import pytest
from servicekit import RecordingAudit

from ferrohsm.audit.chain import AuditEvent
from ferrohsm.audit.sinkbase import Ticket
from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.crypto.seal import Sealer
from ferrohsm.domain import binding
from ferrohsm.domain.errors import AuditUnavailable, NameTaken, StaleRevision, StoreError
from ferrohsm.domain.model import Key, Principal, RequestContext, Role
from ferrohsm.engine.keycache import MaterialCache
from ferrohsm.engine.keyengine import KeyEngine
from ferrohsm.service import KeyService
from ferrohsm.store.memory import MemoryStore

RECORD_MAC = RecordMac.derive(bytes(32))  # record MACs under a test master key

ALICE = RequestContext(Principal("alice", Role.ADMINISTRATOR), request_id="req")


class FaultyStore(MemoryStore):
    """Raises ``fault`` on the next update, before (``after=False``) or after writing."""

    fault: Exception | None = None
    after = False

    def update(self, key: Key) -> Key:
        fault, self.fault = self.fault, None
        if fault is not None and not self.after:
            raise fault
        stored = super().update(key)
        if fault is not None:
            raise fault
        return stored


class ConfirmationsFail(RecordingAudit):
    """Takes intents, refuses every other record once ``down`` is set."""

    down = False

    @overload
    def append(self, event: AuditEvent, *, durable: Literal[True] = ...) -> dict[str, Any]: ...
    @overload
    def append(self, event: AuditEvent, *, durable: Literal[False]) -> Ticket: ...
    @overload
    def append(self, event: AuditEvent, *, durable: bool) -> dict[str, Any] | Ticket: ...
    def append(self, event: AuditEvent, *, durable: bool = True) -> dict[str, Any] | Ticket:
        if self.down and event.outcome != binding.INTENT:
            raise AuditUnavailable("audit down")
        return super().append(event, durable=durable)


def service(store: MemoryStore, audit: RecordingAudit) -> KeyService:
    return KeyService(store, KeyEngine(Sealer(bytes(range(32))), MaterialCache(64, 300)), audit)


def outcomes(audit: RecordingAudit, action: str) -> list[str]:
    return [e.outcome for e in audit.events if e.action == action]


def test_a_change_is_its_intent_the_bound_write_and_the_confirmation() -> None:
    store, audit = MemoryStore(RECORD_MAC), RecordingAudit()
    key = service(store, audit).create_key(ALICE, algorithm="aes-256-gcm", usage="encrypt")
    records = audit.sink.read(0, 1000)
    intent, done = [r for r in records if r["action"] == "key.create"]
    assert (intent["outcome"], done["outcome"]) == ("intent", "success")
    assert done["details"][binding.INTENT_SEQ] == intent["seq"]
    stored = store.get(key.id)
    assert (stored.audit_seq, stored.audit_hash) == (intent["seq"], intent["hash"])
    assert intent["details"][binding.DIGEST] == binding.record_digest(stored)
    assert intent["details"][binding.TARGET_REVISION] == stored.revision == 1
    assert intent["details"][binding.FROM_SEQ] == 0
    rotated = service(store, audit).rotate(ALICE, key.id)
    again = next(r for r in audit.sink.read(0, 1000) if r["action"] == "key.rotate")
    assert again["details"][binding.FROM_SEQ] == intent["seq"]  # built on the creation
    assert rotated.audit_seq == again["seq"]


def test_nothing_is_written_when_the_intent_cannot_be() -> None:
    store, audit = MemoryStore(RECORD_MAC), RecordingAudit()
    svc = service(store, audit)
    key = svc.create_key(ALICE, algorithm="aes-256-gcm", usage="encrypt")
    before = store.get(key.id)
    audit.ok = False
    with pytest.raises(AuditUnavailable):
        svc.rotate(ALICE, key.id)
    assert store.get(key.id) == before  # not even the revision moved: nothing to undo


def test_another_writer_first_is_rolled_back_and_retried() -> None:
    store, audit = FaultyStore(RECORD_MAC), RecordingAudit()
    svc = service(store, audit)
    key = svc.create_key(ALICE, algorithm="aes-256-gcm", usage="encrypt")
    store.fault = StaleRevision("another process wrote first")
    assert svc.rotate(ALICE, key.id).primary_version == 2
    assert outcomes(audit, "key.rotate") == ["intent", "rolled_back", "intent", "success"]


@pytest.mark.parametrize("after", [False, True])
def test_a_store_error_is_settled_by_reading_the_key_back(after: bool) -> None:
    store, audit = FaultyStore(RECORD_MAC), RecordingAudit()
    svc = service(store, audit)
    key = svc.create_key(ALICE, algorithm="aes-256-gcm", usage="encrypt")
    store.fault, store.after = StoreError("disk trouble"), after
    with pytest.raises(StoreError):
        svc.rotate(ALICE, key.id)
    settled = "success" if after else "rolled_back"  # applied anyway, or not at all
    assert outcomes(audit, "key.rotate")[:2] == ["intent", settled]
    assert len(store.get(key.id).versions) == (2 if after else 1)


def test_an_unconfirmable_change_fails_the_audit_log_closed() -> None:
    store, audit = MemoryStore(RECORD_MAC), ConfirmationsFail()
    svc = service(store, audit)
    key = svc.create_key(ALICE, algorithm="aes-256-gcm", usage="encrypt")
    audit.down = True
    with pytest.raises(AuditUnavailable, match="the change was applied, but its audit record "
                                               "is not durable yet"):  # the caller knows
        svc.rotate(ALICE, key.id)
    assert "intent seq" in audit.failed and not audit.healthy()  # until a restart settles it
    assert len(store.get(key.id).versions) == 2  # applied: reconciliation will complete it
    audit.down = False
    with pytest.raises(AuditUnavailable):  # nothing else happens meanwhile
        svc.rotate(ALICE, key.id)


def test_a_taken_name_is_refused_before_any_intent() -> None:
    store, audit = MemoryStore(RECORD_MAC), RecordingAudit()
    svc = service(store, audit)
    svc.create_key(ALICE, algorithm="aes-256-gcm", usage="encrypt", name="taken")
    with pytest.raises(NameTaken):
        svc.create_key(ALICE, algorithm="aes-256-gcm", usage="encrypt", name="taken")
    assert outcomes(audit, "key.create") == ["intent", "success", "error"]


class UnreadableStore(FaultyStore):
    """FaultyStore whose reads fail too while ``unreadable`` (a database gone)."""

    unreadable = False
    lose_reads = False  # the failed update takes the reads down with it

    def update(self, key: Key) -> Key:
        try:
            return super().update(key)
        except StoreError:
            self.unreadable = self.lose_reads
            raise

    def get(self, key_id: str) -> Key:
        if self.unreadable:
            raise StoreError("the database is unreachable")
        return super().get(key_id)


@pytest.mark.parametrize("after", [False, True])
def test_an_unknown_outcome_is_settled_once_the_store_can_be_read(after: bool) -> None:
    """The store failed and could not be read back: the node refuses records until the store
    tells whether the write happened, then writes that settlement itself, no restart needed."""
    store, audit = UnreadableStore(RECORD_MAC), RecordingAudit()
    audit.fail_until_recorded = audit.sink.fail_until_recorded  # type: ignore[method-assign]
    svc = service(store, audit)
    key = svc.create_key(ALICE, algorithm="aes-256-gcm", usage="encrypt")
    store.fault, store.after, store.lose_reads = StoreError("connection lost"), after, True
    with pytest.raises((StoreError, AuditUnavailable)):  # its refusal's record is refused too
        svc.rotate(ALICE, key.id)
    time.sleep(1.2)
    assert not audit.sink.healthy()  # asked again, still cannot tell
    assert store.unreadable
    store.unreadable = store.lose_reads = False
    deadline = time.monotonic() + 5
    while not audit.sink.healthy() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert audit.sink.healthy()
    intent = next(e for e in audit.events if e.action == "key.rotate")
    settled = audit.sink.read(0, 1000)[-1]
    assert settled["action"] == "key.rotate"
    assert settled["outcome"] == ("success" if after else "rolled_back")
    assert settled["details"][binding.INTENT_SEQ] == next(
        r["seq"] for r in audit.sink.read(0, 1000) if r["request_id"] == intent.request_id
        and r["outcome"] == "intent" and r["action"] == "key.rotate")
    assert len(store.get(key.id).versions) == (2 if after else 1)
