"""The parts of the online rekey that need no server: the pause (custody/online.py) and dual
control of a system action (``DualControl.gate_system``: approvals whose target is "system"),
on the memory and SQLite approval stores; and the new key's file (written before the journal,
renamed over the master-key file once committed)."""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from servicekit import RecordingAudit
from test_approvals import ALICE, BOB, CAROL, World, ctx

from ferrohsm.auth.permissions import Action
from ferrohsm.control.dualcontrol import SYSTEM_TARGET
from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.crypto.seal import Sealer
from ferrohsm.custody import online, rekey
from ferrohsm.domain.errors import (
    ApprovalRequired,
    ConfigError,
    Conflict,
    Forbidden,
    InvalidTransition,
)
from ferrohsm.domain.model import Principal, Role
from ferrohsm.engine.keycache import MaterialCache
from ferrohsm.engine.keyengine import KeyEngine
from ferrohsm.service import KeyService
from ferrohsm.store.approvalmac import ApprovalCodec
from ferrohsm.store.approvalstore import ApprovalStore
from ferrohsm.store.importjobs_files import MemoryImportJobStore
from ferrohsm.store.memory_approvals import MemoryApprovalStore
from ferrohsm.store.records import RecordCodec
from ferrohsm.store.sqlite import SQLiteStore
from ferrohsm.store.sqlite_approvals import SQLiteApprovalStore

CODEC = ApprovalCodec(RecordMac.for_approvals(b"a" * 32))  # the approval records' MAC


TTL = timedelta(minutes=10)


# ---- the pause ------------------------------------------------------------------------------

def test_the_rekey_waits_for_requests_in_flight_and_new_ones_wait_for_it() -> None:
    pause, order = online.Pause(), []
    entered, release = threading.Event(), threading.Event()

    def in_flight() -> None:
        with pause.hold():
            entered.set()
            release.wait(5)
            order.append("in-flight done")

    def late() -> None:
        with pause.hold():
            order.append("late request")
    first = threading.Thread(target=in_flight)
    first.start()
    entered.wait(5)

    def rekey() -> None:
        with pause.hold(), pause.exclusive():  # the rekey request itself holds the pause
            order.append("rekey")
    runner = threading.Thread(target=rekey)
    runner.start()
    time.sleep(0.1)
    assert pause.paused and order == []  # waiting for the request in flight
    second = threading.Thread(target=late)
    second.start()
    time.sleep(0.1)
    release.set()
    for t in (first, runner, second):
        t.join(5)
    assert order == ["in-flight done", "rekey", "late request"]
    assert not pause.paused


def test_a_second_rekey_is_refused_and_a_broken_pause_refuses_everything() -> None:
    pause = online.Pause()
    with pause.hold(), pause.exclusive(), pytest.raises(Conflict):
        with pause.exclusive():
            pass
    with pause.hold(), pause.exclusive(), pytest.raises(online.RekeyInProgress):
        pause.enter(wait=False)  # an inline request never stalls the event loop
    assert pause.broken is None
    pause.break_for_good("restart to finish")
    assert pause.broken == "restart to finish"  # /healthz: degraded, with this reason
    with pytest.raises(online.RekeyInProgress, match="restart to finish"), pause.hold():
        pass


# ---- the new key's file ---------------------------------------------------------------------

def test_the_new_key_is_written_beside_then_over_the_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(base64.b64encode(bytes(32)).decode())
    side = tmp_path / ("master.key" + online.SIDECAR)
    side.write_text("left by a run killed before its journal")
    new = online.prepare_key_file(str(key_file))
    assert os.stat(side).st_mode & 0o777 == 0o600
    assert base64.b64decode(side.read_text()) == new
    online.install_key_file(str(key_file), new)
    assert base64.b64decode(key_file.read_text()) == new and not side.exists()
    online.install_key_file(str(key_file), new)  # idempotent once done
    with pytest.raises(ConfigError):
        online.install_key_file(str(key_file), bytes(32))


def test_a_key_file_whose_directory_cannot_take_the_new_key_is_refused_first(
        tmp_path: Path) -> None:
    """E.g. a read-only secrets mount; here (tests may run as root) a parent that is a file."""
    not_a_dir = tmp_path / "secrets"
    not_a_dir.write_text("a file")
    with pytest.raises(Conflict, match="must be writable"):
        online.prepare_key_file(str(not_a_dir / "master.key"))


def test_a_key_file_the_final_rename_could_not_replace_is_refused_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A symlink (replaced by a file, the old key left in its target) and a bind-mounted file
    (EBUSY once every record was re-sealed: an outside tester's outage) are refused before
    anything changes; a rename that fails all the same says where the new key is."""
    target = tmp_path / "real.key"
    target.write_text(base64.b64encode(bytes(range(32))).decode())
    link = tmp_path / "master.key"
    link.symlink_to(target)
    with pytest.raises(Conflict, match="symbolic link"):
        online.prepare_key_file(str(link))
    assert not (tmp_path / "master.key.rekey-new").exists()
    monkeypatch.setattr(online, "_mount_points", lambda: {str(target)})
    with pytest.raises(Conflict, match="mounted on its own"):
        online.prepare_key_file(str(target))
    monkeypatch.setattr(online, "_mount_points", set)
    new = online.prepare_key_file(str(target))

    def busy(*_args: object) -> None:
        raise OSError(16, "Device or resource busy")
    monkeypatch.setattr(os, "replace", busy)
    with pytest.raises(ConfigError, match=r"which is in .*real.key.rekey-new.*mv "):
        online.install_key_file(str(target), new)


@pytest.mark.parametrize(("unseal", "in_env", "file", "why"), [
    ("shamir", False, "", "split-knowledge"), ("env", True, "/k", "FERROHSM_MASTER_KEY"),
    ("env", False, "", "master_key_file"), ("env", False, "/k", "")])
def test_where_an_online_rekey_can_put_the_new_key(unseal: str, in_env: bool, file: str,
                                                     why: str) -> None:
    key_file, reason = online.key_file_for(unseal, in_env, file)
    assert (key_file == "/k") == (why == "")
    assert why in reason and ("ferrohsm rekey" in reason) == bool(why)
    shared, reason = online.key_file_for(unseal, in_env, file, "every node (PostgreSQL)")
    assert shared == "" and "PostgreSQL" in reason and "still hold the old key" in reason


def test_several_processes_on_one_store_refuse_an_online_rekey(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """processes = N: the other processes would go on with the old key in memory."""
    from ferrohsm.config import load_config
    monkeypatch.delenv("FERROHSM_MASTER_KEY", raising=False)
    from ferrohsm.custodywire import online_key_file
    file = str(tmp_path / "master.key")
    overrides: dict[tuple[str, str], object] = {("storage", "key_store"): "sqlite",
                                                ("secrets", "master_key_file"): file}
    assert online_key_file(load_config(env={}, overrides=overrides)) == (file, "")
    key_file, reason = online_key_file(load_config(env={}, overrides={
        **overrides, ("server", "processes"): 2}))
    assert key_file == "" and "the 2 processes of [server].processes = 2" in reason
    assert "ferrohsm rekey" in reason


# ---- dual control of a system action --------------------------------------------------------

@pytest.fixture(params=["memory", "sqlite"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    store: ApprovalStore = MemoryApprovalStore() if request.param == "memory" \
        else SQLiteApprovalStore(tmp_path / "approvals.sqlite3", CODEC)
    yield World(store)
    store.close()


def gate(world: World, who: Principal, approval_id: str | None = None,
         reason: str = "yearly") -> None:
    world.service.dual.gate_system(ctx(who, approval_id), Action.SYSTEM_REKEY,
                                   {"reason": reason}, 1, TTL)


def test_a_system_action_is_parked_voted_and_redeemed_once(world: World) -> None:
    view = world.park(gate, world, ALICE)
    assert (view["key_id"], view["action"], view["required"]) == (
        SYSTEM_TARGET, "system.rekey", 1)
    assert world.park(gate, world, ALICE)["id"] == view["id"]  # the same request: same approval
    with pytest.raises(Forbidden, match="own request"):
        world.approve(view["id"], ALICE)
    with pytest.raises(ApprovalRequired):
        gate(world, ALICE, view["id"])  # not approved yet
    assert world.approve(view["id"], BOB)["state"] == "approved"
    with pytest.raises(Forbidden):
        gate(world, CAROL, view["id"])  # somebody else's approval
    with pytest.raises(Forbidden):
        gate(world, ALICE, view["id"], reason="another")  # another request
    gate(world, ALICE, view["id"])  # redeemed: returns, the caller runs the rekey
    with pytest.raises(InvalidTransition):
        gate(world, ALICE, view["id"])
    listed = world.service.approvals.list(ctx(CAROL), "executed")["approvals"]
    assert [a["key_id"] for a in listed] == [SYSTEM_TARGET]
    assert world.audit.actions("success").count("approval.executed") == 1


# ---- refused before anything changes ----------------------------------------------------------

def test_a_record_that_fails_its_check_stops_the_rekey_before_it_starts(tmp_path: Path) -> None:
    world = World(MemoryApprovalStore())
    key = world.key()
    key_file = tmp_path / "master.key"
    key_file.write_text(base64.b64encode(bytes(32)).decode())  # the MAC key of World's store
    world.store._stored[key.id] = world.store._stored[key.id].replace(b'"enabled"', b'"disabld"')
    installed: list[bytes] = []
    pause = online.Pause()
    run = online.OnlineRekey(world.store, MemoryImportJobStore(), world.audit.append,
                             installed.append, bytes(32), str(key_file), "", pause)
    with pause.hold(), pytest.raises(Conflict, match=f"integrity check .*{key.id}"):
        run(ctx(ALICE))
    assert world.store.get_meta(rekey.JOURNAL) is None and installed == []
    assert not (tmp_path / ("master.key" + online.SIDECAR)).exists()
    assert base64.b64decode(key_file.read_text()) == bytes(32)
    assert not pause.paused


def test_a_stop_waits_for_what_holds_the_pause_then_admits_nothing() -> None:
    """Shutdown drains the pause before the audit log closes: a scheduler tick in the middle of
    a change (its intent written, the store changed) gets its settling record written, instead
    of leaving the intent for the next cold start."""
    pause = online.Pause()
    entered, finished = threading.Event(), []

    def tick() -> None:
        with pause.hold():
            entered.set()
            time.sleep(0.3)
            finished.append(True)
    worker = threading.Thread(target=tick)
    worker.start()
    assert entered.wait(5)
    assert pause.drain(5.0) and finished == [True]
    with pytest.raises(online.RekeyInProgress, match="stopping"):
        pause.enter()
    worker.join()
    held = online.Pause()
    held.enter()
    assert not held.drain(0.05)  # still held after the timeout: said so


def test_a_record_under_the_new_mac_around_old_material_is_resealed(tmp_path: Path) -> None:
    """A writer that slipped past the rekey's pause (a red team found the AES-GCM reserving
    thread doing so) wrote a record under the NEW record MAC around material still sealed under
    the OLD key: the conversion must not take it for converted (it passes the new MAC), or the
    key is lost when the old key goes. It is resealed like an old record."""
    old, new = os.urandom(32), os.urandom(32)
    audit, path = RecordingAudit(), tmp_path / "keys.sqlite3"
    service = KeyService(SQLiteStore(path, rekey.record_mac(old)),
                         KeyEngine(Sealer(old), MaterialCache(16, 60.0)), audit)
    admin = ctx(Principal("alice", Role.ADMINISTRATOR))
    made = service.create_key(admin, algorithm="aes-256-gcm", usage="encrypt", name="slipped")
    under_new = SQLiteStore(path, rekey.record_mac(new))
    slipped = RecordCodec(rekey.record_mac(new)).encode(made)  # old material, the new MAC
    under_new.rewrite_records(lambda key_id, data: slipped)
    converted = rekey.convert(under_new, rekey.MasterKeys(old, new),
                              rekey.Changes(admin, audit.append), lambda done: None)
    assert converted == 1
    key = under_new.get(made.id)
    Sealer(new).unseal(key.versions[0].sealed or b"", key_id=key.id, version=1,
                       algorithm=key.algorithm)  # opens under the new key: not lost
