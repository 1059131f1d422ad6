"""A dead node's intents, settled by a live one (integrity/livesettle.py), and the per-node
locks that tell a dead node from a slow one (store/nodelock.py ``FileNodeLeases``).

A kill is played by closing the dead node's lock descriptor without the clean stop's unlink
(``flock`` locks belong to the open file description, so two leases in one process contend as
two processes do; the kernel drops a killed process's the same way)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from test_reconcile import (  # close_all: its autouse fixture closes every Data opened
    ALICE,
    HMAC_KEY,
    Crash,
    Data,
    close_all,  # noqa: F401
    settled,
)

from ferrohsm.audit.sinks import FileSink
from ferrohsm.crypto.seal import Sealer
from ferrohsm.domain import binding
from ferrohsm.domain.model import Key
from ferrohsm.engine.keycache import MaterialCache
from ferrohsm.engine.keyengine import KeyEngine
from ferrohsm.integrity.livesettle import LiveSettler
from ferrohsm.service import KeyService
from ferrohsm.store.nodelock import FileNodeLeases


def killed(lease: FileNodeLeases) -> None:
    """kill -9: the lock is gone with the process; its file stays."""
    assert lease._fd is not None
    os.close(lease._fd)
    lease._fd = None


def test_a_node_is_dead_only_once_its_lock_is_free(tmp_path: Path) -> None:
    me, other = FileNodeLeases(tmp_path), FileNodeLeases(tmp_path)
    assert me.dead() == [] and other.dead() == []  # both alive
    killed(other)
    assert me.dead() == [other.node]
    assert me.dead() == []  # held by us until buried or released
    me.release(other.node)
    assert me.dead() == [other.node]
    me.bury(other.node)
    assert not (tmp_path / "nodes" / f"{other.node}.lock").exists() and me.dead() == []
    half = tmp_path / "nodes" / f".{'e' * 32}.tmp"  # died before naming its lock file
    half.write_bytes(b"")
    assert me.dead() == [] and half.exists()  # a process starting now: not yet locked
    os.utime(half, (time.time() - 120, time.time() - 120))
    assert me.dead() == [] and not half.exists()
    me.close()  # a clean stop leaves nothing behind
    assert list((tmp_path / "nodes").iterdir()) == []


def test_the_live_others_are_counted_without_the_dead_even_while_dead_is_looked_for(
        tmp_path: Path) -> None:
    """An online rekey asks how many other nodes are alive (``others_alive``) while the
    scheduler's leader may be taking dead nodes' locks (``dead``) in another thread: a dead
    node's lock held by that look must not count as a live node (a red team saw 296 false
    answers in 3,000 before both looks took turns), and ``sole`` holds the start-up lock."""
    me, alive = FileNodeLeases(tmp_path), FileNodeLeases(tmp_path)
    for _ in range(20):
        killed(FileNodeLeases(tmp_path))
    stop, wrong = threading.Event(), []

    def scheduler() -> None:
        while not stop.is_set():
            for node in me.dead():
                me.release(node)
    thread = threading.Thread(target=scheduler)
    thread.start()
    try:
        for _ in range(500):
            if me.others_alive() != [alive.node]:
                wrong.append(1)
    finally:
        stop.set()
        thread.join()
    assert not wrong
    with me.sole() as others:
        assert others == 1
        with alive.sole() as busy:
            assert busy is None  # the start-up lock is taken: nobody starts meanwhile
    alive.close()
    with me.sole() as others:
        assert others == 0
    me.close()


def test_the_dead_nodes_intent_is_settled_while_the_others_serve(tmp_path: Path) -> None:
    data = Data.open(tmp_path)
    key = data.create()
    (tmp_path / "locks").mkdir()
    dead = FileNodeLeases(tmp_path / "locks")
    data.svc.guard.node = dead.node  # this service plays the node that dies
    data.audit.crash_on = "success"  # killed after its store write, before its record
    with pytest.raises(Crash):
        data.svc.rotate(ALICE, key.id)
    data.audit.crash_on = None
    data.svc.guard.node = None
    killed(dead)
    intent = [r for r in data.records(key.id) if r["outcome"] == "intent"][-1]
    assert intent["details"]["node"] == dead.node
    live = FileNodeLeases(tmp_path / "locks")
    settle = LiveSettler(live, data.store, None, data.sink, HMAC_KEY)
    assert settle() == 1
    assert settled(data.records(key.id), intent["seq"]) == ["success"]
    record = [r for r in data.records(key.id) if r["outcome"] == "success"][-1]
    assert "after its node died" in record["message"]
    assert live.dead() == []  # buried: nothing read again next time
    assert settle() == 0


def test_a_change_the_dead_node_never_applied_is_rolled_back(tmp_path: Path) -> None:
    data = Data.open(tmp_path)
    key = data.create()
    (tmp_path / "locks").mkdir()
    dead = FileNodeLeases(tmp_path / "locks")
    data.svc.guard.node = dead.node
    data.store.crash_next = True  # killed before its store write
    with pytest.raises(Crash):
        data.svc.rotate(ALICE, key.id)
    killed(dead)
    intent = [r for r in data.records(key.id) if r["outcome"] == "intent"][-1]
    live = FileNodeLeases(tmp_path / "locks")
    assert LiveSettler(live, data.store, None, data.sink, HMAC_KEY)() == 1
    assert settled(data.records(key.id), intent["seq"]) == [binding.ROLLED_BACK]
    assert len(data.store.get(key.id).versions) == 1


@pytest.mark.parametrize("applied", [False, True])
def test_a_live_nodes_change_in_flight_on_the_key_tells_what_happened(
        tmp_path: Path, applied: bool) -> None:
    """A live node is changing the key (its change open, perhaps stored): it read either the
    record the dead node's change wrote (applied) or the one before (not): no need to wait."""
    data = Data.open(tmp_path)
    key = data.create()
    (tmp_path / "locks").mkdir()
    dead, alive = FileNodeLeases(tmp_path / "locks"), FileNodeLeases(tmp_path / "locks")
    data.svc.guard.node = dead.node
    if applied:
        data.audit.crash_on = "success"  # stored, then killed before its record
    else:
        data.store.crash_next = True  # killed before its store write
    with pytest.raises(Crash):
        data.svc.rotate(ALICE, key.id)
    killed(dead)
    data.audit.crash_on = None
    data.svc.guard.node = alive.node
    data.audit.crash_on = "success"  # the live node's own change: stored, record to come
    with pytest.raises(Crash):
        data.svc.rotate(ALICE, key.id)
    data.audit.crash_on = None
    first, second = [r for r in data.records(key.id) if r["outcome"] == "intent"][-2:]
    assert second["details"]["from_seq"] == (first["seq"] if applied else key.audit_seq)
    assert LiveSettler(alive, data.store, None, data.sink, HMAC_KEY)() == 1
    outcome = binding.SUCCESS if applied else binding.ROLLED_BACK
    assert settled(data.records(key.id), first["seq"]) == [outcome]
    assert settled(data.records(key.id), second["seq"]) == []  # the live node's: not ours
    assert not (tmp_path / "locks" / "nodes" / f"{dead.node}.lock").exists()


def test_a_key_bound_past_the_log_read_waits_for_a_later_pass(tmp_path: Path) -> None:
    """A write between the settler's reading of the log and of the store: tried again 10 s
    later, its lock held meanwhile, not a whole-log read every tick."""
    data = Data.open(tmp_path)
    key = data.create()
    (tmp_path / "locks").mkdir()
    dead, alive = FileNodeLeases(tmp_path / "locks"), FileNodeLeases(tmp_path / "locks")
    data.svc.guard.node = dead.node
    data.store.crash_next = True
    with pytest.raises(Crash):
        data.svc.rotate(ALICE, key.id)
    killed(dead)
    intent = [r for r in data.records(key.id) if r["outcome"] == "intent"][-1]
    now = [0.0]
    settle = LiveSettler(alive, data.store, None, data.sink, HMAC_KEY, clock=lambda: now[0])
    real_read = data.store.read_afresh

    def read_after_a_write(key_id: str) -> Key:
        current = real_read(key_id)
        return replace(current, audit_seq=data.sink.head()[0] + 5)  # bound past what was read
    data.store.read_afresh = read_after_a_write  # type: ignore[method-assign]
    assert settle() == 0
    assert (tmp_path / "locks" / "nodes" / f"{dead.node}.lock").exists()
    data.store.read_afresh = real_read  # type: ignore[method-assign]
    assert settle() == 0  # not read again before RETRY
    now[0] = LiveSettler.RETRY
    assert settle() == 1
    assert settled(data.records(key.id), intent["seq"]) == [binding.ROLLED_BACK]


def test_the_leader_reads_the_log_to_the_head_other_writers_left(tmp_path: Path) -> None:
    """The leader's own sink knows the head as of its last write; an idle leader's is behind
    the log (the test_cluster_chaos run that found it: an intent left unsettled for a minute,
    the stored record bound to a change past that head)."""
    data = Data.open(tmp_path)
    key = data.create()
    (tmp_path / "locks").mkdir()
    dead = FileNodeLeases(tmp_path / "locks")
    data.svc.guard.node = dead.node
    data.store.crash_next = True
    with pytest.raises(Crash):
        data.svc.rotate(ALICE, key.id)  # the dead node's change, never applied
    killed(dead)
    other_sink = FileSink(tmp_path / "audit", HMAC_KEY)  # another live writer of the log
    other = KeyService(data.store, KeyEngine(Sealer(bytes(range(32))), MaterialCache(64, 300)),
                       other_sink)
    other.rotate(ALICE, key.id)  # the store is now bound past the head data.sink knows
    intent = [r for r in other_sink.read(0, 1000)
              if r["key_id"] == key.id and r["outcome"] == "intent"][-2]
    live = FileNodeLeases(tmp_path / "locks")
    assert LiveSettler(live, data.store, None, data.sink, HMAC_KEY)() == 1
    records = [r for r in data.sink.read(0, 1000) if r["key_id"] == key.id]
    assert settled(records, intent["seq"]) == [binding.ROLLED_BACK]
    other_sink.close()
