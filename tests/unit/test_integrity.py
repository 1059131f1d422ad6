"""The start-up integrity checks at unit level: the log scan, the bounded naming, the check of
keys bound to audit seqs (for when key records carry them), and the checkpoint thread's witness
copies with a failing witness."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ferrohsm.audit.chain import AuditEvent
from ferrohsm.audit.sinks import FileSink, SQLiteSink
from ferrohsm.domain.model import Page
from ferrohsm.integrity import logcheck
from ferrohsm.integrity.logscan import AuditLocation, created_keys

KEY = b"k" * 32
IDS = [f"0190a000-0000-7000-8000-{n:012d}" for n in range(4)]


def event(action: str, key_id: str | None, outcome: str = "success") -> AuditEvent:
    return AuditEvent(actor="admin", role="administrator", action=action, outcome=outcome,
                      message=f"{action} {key_id}", key_id=key_id,
                      details={"key_id": "decoy-in-details"})


def fill(sink: FileSink | SQLiteSink) -> None:
    for key_id in IDS[:3]:
        sink.append(event("key.create", key_id))
    sink.append(event("key.create", IDS[3], outcome="error"))  # refused: never created
    sink.append(event("key.lost", IDS[1]))  # accepted as lost at an earlier start-up
    sink.append(event("key.rotate", IDS[0]))
    sink.close()


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_created_keys_and_presence(tmp_path: Path, kind: str) -> None:
    location = AuditLocation(str(tmp_path / "audit"), kind)
    assert not location.present()
    if kind == "file":
        fill(FileSink(location.directory, KEY, durable=False))
    else:
        fill(SQLiteSink(location.database, KEY, durable=False))
    assert location.present() and location.has_checkpoints()
    assert created_keys(location) == {IDS[0], IDS[2]}


def test_named_is_bounded() -> None:
    ids = [f"id-{n}" for n in range(25)]
    assert logcheck.named(ids[:2]) == "id-0, id-1"
    text = logcheck.named(ids)
    assert text.endswith("id-19 and 5 more") and "id-20" not in text


class FakeStore:
    """Just enough of a KeyStore for check_bindings: one page of keys."""

    def __init__(self, keys: list[Any]) -> None:
        self.keys = keys

    def list(self, filters: object, limit: int = 100, page_token: str | None = None) -> Page:
        return Page(tuple(self.keys), None)

    def walk(self) -> Iterator[Any]:
        return iter(self.keys)


def test_keys_bound_beyond_the_head_refuse() -> None:
    keys = [SimpleNamespace(id=IDS[0], audit_seq=10), SimpleNamespace(id=IDS[1], audit_seq=12),
            SimpleNamespace(id=IDS[2], audit_seq=0)]
    store: Any = FakeStore(keys)
    logcheck.check_bindings(store, head_seq=12)
    with pytest.raises(logcheck.StartupRefused, match=rf"1 key record\(s\) .* seq 11: {IDS[1]}"):
        logcheck.check_bindings(store, head_seq=11)


class FlakyWitness:
    description = "flaky"

    def __init__(self) -> None:
        self.failing = True
        self.got: list[int] = []
        self.lock = threading.Lock()

    def publish(self, checkpoint: dict[str, Any]) -> None:
        if self.failing:
            raise OSError("down")
        with self.lock:
            self.got.append(checkpoint["seq"])


def wait_for(what: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_time_checkpoints_and_a_witness_that_fails_then_recovers(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "audit", KEY, durable=False, checkpoint_interval=0.1)
    witness = FlakyWitness()
    sink.attach_witness(witness)
    try:
        sink.append(event("key.create", IDS[0]))
        wait_for(lambda: sink.describe()["last_checkpoint_seq"] == sink.head()[0])
        wait_for(lambda: sink.describe()["witness_failures"] >= 1)
        witness.failing = False
        sink.append(event("key.create", IDS[1]))  # the next checkpoint carries the newest head
        wait_for(lambda: witness.got and witness.got[-1] == sink.head()[0])
        assert sink.describe()["witnessed_seq"] == sink.head()[0]
        assert sink.describe()["witness"] == "flaky"
    finally:
        sink.close()
