"""The guarded call (ferrohsm/service/guard.py) and ``recorded``: each refusal of an operation is
recorded exactly once, names the key it targeted, and leaves marked Recorded."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from servicekit import RecordingAudit

from ferrohsm.auth.permissions import Action
from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.crypto.seal import Sealer
from ferrohsm.domain.errors import (
    FerroError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    RateLimited,
    Recorded,
    recorded,
)
from ferrohsm.domain.model import Key, Principal, RequestContext, Role
from ferrohsm.engine.keycache import MaterialCache
from ferrohsm.engine.keyengine import KeyEngine
from ferrohsm.service import KeyService
from ferrohsm.service.guard import MAX_REF
from ferrohsm.store.memory import MemoryStore

ADMIN = RequestContext(Principal("alice", Role.ADMINISTRATOR), request_id="r-admin")
OPERATOR = RequestContext(Principal("bob", Role.OPERATOR), request_id="r-operator")
SERVICE = RequestContext(Principal("svc", Role.SERVICE), request_id="r-service")


@pytest.fixture
def world() -> Iterator[tuple[KeyService, RecordingAudit, Key]]:
    audit = RecordingAudit()
    store = MemoryStore(RecordMac.derive(bytes(32)))
    engine = KeyEngine(Sealer(os.urandom(32)), MaterialCache(16, 60.0))
    service = KeyService(store, engine, audit)
    key = service.create_key(ADMIN, algorithm="aes-256-gcm", usage="encrypt", name="k1")
    audit.events.clear()
    yield service, audit, key


def test_recorded_keeps_class_message_and_attributes() -> None:
    original = MethodNotAllowed("no", allow=("GET",))
    marked = recorded(original)
    assert isinstance(marked, MethodNotAllowed) and isinstance(marked, Recorded)
    assert not isinstance(original, Recorded)
    assert (marked.message, marked.allow, marked.status, type(marked).__name__) == \
        ("no", ("GET",), 405, "MethodNotAllowed")
    assert recorded(marked) is marked
    assert type(recorded(MethodNotAllowed("again"))) is type(marked)  # one class per class
    assert isinstance(recorded(FerroError("plain")), Recorded)


def test_outcomes() -> None:
    assert Forbidden().outcome == RateLimited().outcome == "denied"
    assert NotFound().outcome == FerroError().outcome == "error"


@pytest.mark.parametrize("ref", ["id", "name"])
def test_a_refused_role_is_recorded_once_against_the_key(
        world: tuple[KeyService, RecordingAudit, Key], ref: str) -> None:
    service, audit, key = world
    with pytest.raises(Forbidden) as refused:
        service.schedule_destroy(OPERATOR, key.id if ref == "id" else "k1")
    assert isinstance(refused.value, Recorded)
    [event] = audit.events
    assert (event.action, event.outcome, event.key_id) == ("key.destroy", "denied", key.id)


def test_a_refused_role_hears_403_whether_or_not_the_key_exists(
        world: tuple[KeyService, RecordingAudit, Key]) -> None:
    service, audit, _ = world
    with pytest.raises(Forbidden, match=r"role operator may not perform key\.destroy"):
        service.schedule_destroy(OPERATOR, "nothing-here")
    [event] = audit.events
    assert (event.key_id, event.details) == (None, {"key_ref": "nothing-here"})


def test_an_unknown_reference_is_recorded_printable_and_bounded(
        world: tuple[KeyService, RecordingAudit, Key]) -> None:
    service, audit, _ = world
    with pytest.raises(NotFound):
        service.encrypt(SERVICE, "a\u200bb" + "x" * 500, b"data")
    [event] = audit.events
    assert (event.action, event.outcome) == ("crypto.encrypt", "error")
    assert event.details["key_ref"] == ("a?b" + "x" * 500)[:MAX_REF]


def test_a_failed_operation_is_recorded_once(
        world: tuple[KeyService, RecordingAudit, Key]) -> None:
    service, audit, key = world
    with pytest.raises(FerroError) as failed:
        service.decrypt(SERVICE, key.id, "fhsm:v1:AAAA")
    assert isinstance(failed.value, Recorded)
    [event] = audit.events
    assert (event.action, event.outcome, event.key_id) == ("crypto.decrypt", "error", key.id)


def test_success_is_recorded_once_and_unmarked(
        world: tuple[KeyService, RecordingAudit, Key]) -> None:
    service, audit, key = world
    service.encrypt(SERVICE, "k1", b"data")
    [event] = audit.events
    assert (event.action, event.outcome, event.key_id) == ("crypto.encrypt", "success", key.id)


def test_run_asks_whose_key_only_on_refusal(
        world: tuple[KeyService, RecordingAudit, Key]) -> None:
    service, audit, key = world
    asked: list[int] = []

    def key_of() -> str | None:
        asked.append(1)
        return key.id

    assert service.guard.run(ADMIN, Action.AUDIT_READ, lambda: 7, key_of=key_of) == 7
    assert asked == [] and audit.events == []
    with pytest.raises(Forbidden):
        service.guard.run(SERVICE, Action.AUDIT_READ, lambda: 7, key_of=key_of)
    [event] = audit.events
    assert (event.action, event.outcome, event.key_id, asked) == \
        ("audit.read", "denied", key.id, [1])
