"""No change without its record, no record without its change (README, "No change without its
record"), against real servers:

* kill -9 of a serving process under concurrent create/rotate/encrypt clients, KILLS times per
  key store x audit sink, each followed by a restart (start-up reconciliation runs): every key
  and version in the store has its success record, every success record's change is in the
  store, every acknowledged create and rotation is in both, and the log verifies at the end;
* a full audit disk (RLIMIT_FSIZE on the server process) while 1, 2 and 8 writers rotate one key:
  every call is refused with 503 and no version appears, for each key store;
* a dual-control execution and a scheduler rotation during an audit outage change nothing;
* an older copy of a key record put back stops start-up, naming the key, until
  ``--accept-unrecorded`` binds it as it is (audited).

Timing on the 2-core dev box: the four kill -9 runs take about 12-20 s each with KILLS = 20
(FERROHSM_ONE_TRUTH_KILLS overrides it), the outage runs about 10 s per store.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from live import LiveServer
from test_fail_closed import full_disk
from test_serve_process import ROOT, service_token

from ferrohsm.audit.offline import chained_lines, expand_paths, file_lines
from ferrohsm.cli.quickstart import MASTER_FILE
from ferrohsm.control.scheduler import RetentionScheduler
from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.domain.model import KeyFilter, key_view
from ferrohsm.store.filesystem import FilesystemStore
from ferrohsm.tls.context import client_context

KILLS = int(os.environ.get("FERROHSM_ONE_TRUTH_KILLS", "20"))
ROTATIONS = ("key.rotate", "scheduler.rotate")
Record = dict[str, Any]
KeyView = dict[str, Any]


# ---- a server process ----------------------------------------------------------------------

@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str
    ca: str
    admin: str
    data: Path
    sink: str

    def connect(self, timeout: float = 5.0) -> http.client.HTTPSConnection:
        host, _, port = self.url.removeprefix("https://").rpartition(":")
        return http.client.HTTPSConnection(host, int(port), timeout=timeout,
                                           context=client_context(self.ca))

    def call(self, method: str, path: str, body: Any = None, token: str | None = None,
             conn: http.client.HTTPSConnection | None = None) -> tuple[int, Any]:
        own = conn is None
        conn = conn or self.connect()
        try:
            headers = {"Authorization": f"Bearer {token or self.admin}"}
            data = None if body is None else json.dumps(body).encode()
            if data is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            if own:
                conn.close()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.close_pipe()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.close_pipe()
        return code

    def close_pipe(self) -> None:
        if self.proc.stdout:
            self.proc.stdout.close()


def server_record_mac(data: Path) -> RecordMac:
    """The record-MAC key of the quickstart server on ``data`` (from its 0600 master-key file),
    so the test can put a record back as an operator with the master key could."""
    return RecordMac.derive(base64.b64decode((data / MASTER_FILE).read_text().strip()))


def start(data: Path, store: str, sink: str) -> Server:
    """``ferrohsm quickstart`` on ``data``: start-up reconciliation runs before it serves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
    env.update(FERROHSM_AUDIT_SINK=sink, FERROHSM_RATE_LIMIT_REQUESTS_PER_SECOND="1000000",
               FERROHSM_RATE_LIMIT_BURST="1000000")  # the load is ours: no 429s
    log_path = data.parent / "server.log"
    with open(log_path, "a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ferrohsm", "quickstart", "--data-dir",
                                 str(data), "--listen", "127.0.0.1:0", "--key-store", store],
                                cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=log, env=env)
    exports: dict[str, str] = {}
    assert proc.stdout is not None
    while len(exports) < 3:
        line = proc.stdout.readline()
        assert line.startswith("export FERROHSM_"), line + log_path.read_text()[-3000:]
        name, _, value = line.strip().removeprefix("export ").partition("=")
        exports[name] = value
    return Server(proc, exports["FERROHSM_URL"], exports["FERROHSM_CA_CERT"],
                  exports["FERROHSM_TOKEN"], data, sink)


def stored_keys(srv: Server) -> list[KeyView]:
    keys: list[KeyView] = []
    token = ""
    while True:
        status, page = srv.call("GET", "/v1/keys?limit=1000" + (f"&page_token={token}"
                                                                if token else ""))
        assert status == 200, page
        keys += page["keys"]
        token = page.get("next_page_token") or ""
        if not token:
            return keys


def audit_records(data: Path, sink: str) -> list[Record]:
    """Every complete stored record (a line still being written is left for next time)."""
    directory = data / "audit"
    lines = file_lines(str(directory / "audit.sqlite3")) if sink == "sqlite" \
        else chained_lines(expand_paths([str(directory)]))
    return [json.loads(raw) for raw in lines if raw.endswith(b"\n")]


def verify(data: Path, sink: str) -> None:
    log = data / "audit" / ("audit.sqlite3" if sink == "sqlite" else "")
    result = subprocess.run([sys.executable, "-m", "ferrohsm", "audit", "verify",
                             str(log), "--hmac-key-file",
                             str(data / "audit-hmac.key")],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- what must hold -------------------------------------------------------------------------

def confirmed(records: list[Record]) -> set[tuple[str, int]]:
    """(key id, version) of every version a success record says was made."""
    made = set()
    for r in records:
        if r["outcome"] == "success" and r["key_id"]:
            if r["action"] == "key.create":
                made.add((r["key_id"], 1))
            elif r["action"] in ROTATIONS:
                made.add((r["key_id"], r["key_version"]))
    return made


def in_store(keys: list[KeyView]) -> set[tuple[str, int]]:
    return {(k["id"], v["version"]) for k in keys for v in k["versions"]}


def unaudited(keys: list[KeyView], records: list[Record]) -> set[tuple[str, int]]:
    """Versions in the store that no success record made: must be none."""
    return in_store(keys) - confirmed(records)


def unapplied(keys: list[KeyView], records: list[Record]) -> set[tuple[str, int]]:
    """Versions a success record made that the store does not hold: must be none."""
    return confirmed(records) - in_store(keys)


# ---- load ----------------------------------------------------------------------------------

@dataclass
class Acked:
    """What clients were told succeeded (2xx)."""

    versions: list[tuple[str, int]] = field(default_factory=list)


class Load:
    """Two creators, two rotators, two encrypters, until the server dies (or ``stop``)."""

    def __init__(self, srv: Server, acked: Acked, service: str, rng: random.Random) -> None:
        self.srv, self.acked, self.service = srv, acked, service
        self.ids = sorted({key_id for key_id, _ in acked.versions})
        self.rng = random.Random(rng.random())  # noqa: S311  test load, not secrets
        self.halt = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(job,), daemon=True)
                        for job in (self._create, self._create, self._rotate, self._rotate,
                                    self._encrypt, self._encrypt)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.halt.set()
        for t in self.threads:
            t.join(15)

    def _run(self, job: Any) -> None:
        conn = self.srv.connect(timeout=3)
        try:
            while not self.halt.is_set():
                job(conn)
        except (OSError, http.client.HTTPException, ValueError):
            return  # the server was killed
        finally:
            conn.close()

    def _create(self, conn: http.client.HTTPSConnection) -> None:
        status, key = self.srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                         "usage": "encrypt"}, conn=conn)
        if status == 201:
            self.acked.versions.append((key["id"], 1))
            self.ids.append(key["id"])

    def _rotate(self, conn: http.client.HTTPSConnection) -> None:
        key_id = self.rng.choice(self.ids)
        status, key = self.srv.call("POST", f"/v1/keys/{key_id}/rotate", conn=conn)
        if status == 200:
            self.acked.versions.append((key_id, key["primary_version"]))

    def _encrypt(self, conn: http.client.HTTPSConnection) -> None:
        key_id = self.rng.choice(self.ids)
        self.srv.call("POST", f"/v1/keys/{key_id}/encrypt",
                      {"plaintext": base64.b64encode(b"one truth").decode()},
                      token=self.service, conn=conn)


# ---- kill -9 under load --------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("store,sink", [("filesystem", "file"), ("filesystem", "sqlite"),
                                        ("sqlite", "file"), ("sqlite", "sqlite")])
def test_kill_9_under_load_leaves_no_change_without_its_record(tmp_path: Path, store: str,
                                                               sink: str) -> None:
    data = tmp_path / "data"
    srv = start(data, store, sink)
    service, acked = service_token(data), Acked()
    rng = random.Random(f"{store}/{sink}")  # noqa: S311  reproducible kill delays
    for _ in range(3):
        status, key = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                    "usage": "encrypt"})
        assert status == 201
        acked.versions.append((key["id"], 1))
    for kill in range(KILLS):
        load = Load(srv, acked, service, rng)
        load.start()
        time.sleep(rng.uniform(0.05, 0.4))
        srv.kill()
        load.stop()
        srv = start(data, store, sink)
        keys, records = stored_keys(srv), audit_records(data, sink)
        context = f"after kill {kill + 1} ({store} store, {sink} sink)"
        assert not unaudited(keys, records), f"unaudited versions {context}"
        assert not unapplied(keys, records), f"recorded versions missing from the store {context}"
        lost = set(acked.versions) - (in_store(keys) & confirmed(records))
        assert not lost, f"acknowledged changes lost {context}: {sorted(lost)[:5]}"
        assert not [r for r in records if r["action"] == "store.bound"], context
    assert len(acked.versions) > 3 + KILLS, "the load was too light to mean anything"
    assert srv.stop() == 0
    verify(data, sink)
    settled = [r["outcome"] for r in audit_records(data, sink) if r["actor"] == "system"
               and ("at start-up" in r["message"] or "before a crash" in r["message"])]
    print(f"{store}/{sink}: {len(acked.versions)} acknowledged versions; settled at start-up: "
          f"{settled.count('success')} completed, {settled.count('rolled_back')} rolled back")


# ---- a full audit disk ----------------------------------------------------------------------

def grow_audit_log(srv: Server, key_id: str, service: str, store_files: list[Path]) -> int:
    """Encrypt until the audit log is the largest file the server writes; its size then."""
    audit = srv.data / "audit"
    conn = srv.connect()
    try:
        for _ in range(2000):
            largest = max(p.stat().st_size for p in audit.iterdir() if p.is_file())
            if largest > max(p.stat().st_size for p in store_files) + 4096:
                return largest
            srv.call("POST", f"/v1/keys/{key_id}/encrypt",
                     {"plaintext": base64.b64encode(b"x").decode()}, token=service, conn=conn)
    finally:
        conn.close()
    raise AssertionError("the audit log did not outgrow the key store")


def rotate_together(srv: Server, key_id: str, writers: int, seconds: float) -> list[int]:
    statuses: list[int] = []
    deadline = time.monotonic() + seconds

    def writer() -> None:
        conn = srv.connect()
        try:
            while time.monotonic() < deadline:
                statuses.append(srv.call("POST", f"/v1/keys/{key_id}/rotate", conn=conn)[0])
        finally:
            conn.close()
    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return statuses


@pytest.mark.slow
@pytest.mark.parametrize("store", ["filesystem", "sqlite"])
def test_a_full_audit_disk_refuses_every_rotation_and_leaks_no_version(tmp_path: Path,
                                                                        store: str) -> None:
    data = tmp_path / "data"
    srv = start(data, store, "file")
    try:
        status, key = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                    "usage": "encrypt"})
        assert status == 201
        store_files = [p for p in data.rglob("*") if p.is_file() and "audit" not in p.parts
                       and p.parent.name != "tls"]
        limit = grow_audit_log(srv, key["id"], service_token(data), store_files) + 10
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, (limit, hard))  # the disk is full
        try:
            for writers in (1, 2, 8):
                statuses = rotate_together(srv, key["id"], writers, 2.0)
                assert statuses and set(statuses) == {503}, (writers, sorted(set(statuses)))
                health = srv.call("GET", "/healthz")[1]  # each call failed on its own intent
                assert health["audit"]["healthy"], health
        finally:
            resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
        keys, records = stored_keys(srv), audit_records(data, "file")
        assert in_store(keys) == confirmed(records) == {(key["id"], 1)}
        assert [r["outcome"] for r in records if r["action"] == "key.rotate"
                and r["outcome"] in ("intent", "success")] == []  # no intent got through
        assert srv.call("POST", f"/v1/keys/{key['id']}/rotate")[0] == 200  # disk space back
        keys, records = stored_keys(srv), audit_records(data, "file")
        assert in_store(keys) == confirmed(records) == {(key["id"], 1), (key["id"], 2)}
    finally:
        assert srv.stop() == 0
    verify(data, "file")


# ---- dual control and the scheduler during an outage ------------------------------------------

CONFIG = """
[policy.tags.pci]
approvals_required = 2
approval_actions = ["rotate"]
approval_ttl_seconds = 3600

[policy.tags.rotating]
rotation_days = 1
"""


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    srv = LiveServer(tmp_path, key_store="sqlite", config_text=CONFIG)
    yield srv
    srv.close()


def live_state(srv: LiveServer) -> tuple[list[KeyView], list[Record]]:
    keys = [key_view(k) for k in srv.rt.store.list(KeyFilter(), 1000).keys]
    return keys, srv.rt.audit.read(0, 100_000)


def test_dual_control_execution_during_an_audit_outage_changes_nothing(live: LiveServer
                                                                       ) -> None:
    alice, bob, carol = (live.token("administrator", "alice"), live.token("operator", "bob"),
                         live.token("administrator", "carol"))
    status, _, key = live.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                    "usage": "encrypt", "tags": ["pci"]},
                               token=alice)
    assert status == 201
    status, _, parked = live.call("POST", f"/v1/keys/{key['id']}/rotate", {}, token=alice)
    assert status == 202
    approval = parked["approval"]["id"]
    for voter in (bob, carol):
        assert live.call("POST", f"/v1/approvals/{approval}/approve", {}, token=voter)[0] == 200
    execute = {"X-Approval-ID": approval}
    with full_disk(live):
        status, _, _ = live.call("POST", f"/v1/keys/{key['id']}/rotate", {}, token=alice,
                                 headers=execute)
    assert status == 503
    assert live.rt.approvals is not None
    assert live.rt.approvals.get(approval).state.value == "approved"  # not consumed
    keys, records = live_state(live)
    assert in_store(keys) == confirmed(records) == {(key["id"], 1)}
    assert not [r for r in records if r["action"] in ("approval.executed", "key.rotate")
                and r["outcome"] in ("intent", "success")]
    status, _, rotated = live.call("POST", f"/v1/keys/{key['id']}/rotate", {}, token=alice,
                                   headers=execute)
    assert status == 200 and rotated["primary_version"] == 2
    keys, records = live_state(live)
    assert in_store(keys) == confirmed(records)
    assert live.rt.approvals.get(approval).state.value == "executed"


def test_a_scheduled_rotation_during_an_audit_outage_changes_nothing(live: LiveServer) -> None:
    status, _, key = live.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                    "usage": "encrypt", "tags": ["rotating"]})
    assert status == 201
    scheduler = RetentionScheduler(live.rt.service)
    later = datetime.now(UTC) + timedelta(days=2)
    with full_disk(live):
        report = scheduler.tick(later)
    assert report.rotated == 0 and report.failed >= 1
    keys, records = live_state(live)
    assert in_store(keys) == confirmed(records) == {(key["id"], 1)}
    assert scheduler.tick(later).rotated == 1  # the disk has room again
    keys, records = live_state(live)
    assert in_store(keys) == confirmed(records) == {(key["id"], 1), (key["id"], 2)}


# ---- start-up refuses what the log does not explain -------------------------------------------

def test_start_up_refuses_an_older_copy_put_back_until_accepted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = start(data, "filesystem", "file")
    status, key = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt"})
    assert status == 201
    assert srv.stop() == 0
    store = FilesystemStore(data, server_record_mac(data))
    old = store.get(key["id"])  # a backup of the record, authentic when it was written
    store.close()
    srv = start(data, "filesystem", "file")
    assert srv.call("POST", f"/v1/keys/{key['id']}/rotate")[0] == 200
    assert srv.stop() == 0
    store = FilesystemStore(data, server_record_mac(data))
    store.update(replace(old, revision=store.get(key["id"]).revision))  # the backup put back
    store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
    refused = subprocess.run([sys.executable, "-m", "ferrohsm", "quickstart", "--data-dir",
                              str(data), "--listen", "127.0.0.1:0"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1 and not refused.stdout
    assert key["id"] in refused.stderr and "older copy" in refused.stderr
    assert "--accept-unrecorded" in refused.stderr
    with open(data.parent / "server.log", "a") as log:
        accepted = subprocess.Popen([sys.executable, "-m", "ferrohsm", "quickstart",
                                     "--data-dir", str(data), "--listen", "127.0.0.1:0",
                                     "--accept-unrecorded"], cwd=ROOT, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=log)
    assert accepted.stdout is not None and accepted.stdout.readline().startswith("export")
    accepted.send_signal(signal.SIGTERM)
    assert accepted.wait(30) == 0
    accepted.stdout.close()
    records = audit_records(data, "file")
    bound = [r for r in records if r["action"] == "store.bound" and r["key_id"] == key["id"]]
    assert [r["outcome"] for r in bound] == ["intent", "success"]
    assert any(r["action"] == "integrity.unrecorded_accepted" for r in records)
    srv = start(data, "filesystem", "file")  # accepted once: the next start is clean
    assert [v["version"] for v in stored_keys(srv)[0]["versions"]] == [1]
    assert srv.stop() == 0
    verify(data, "file")
