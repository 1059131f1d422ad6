"""Many processes, one FerroHSM: the consistency statements of README "Running several nodes",
each as a test through the public API only, against real ``ferrohsm serve`` processes.

``cluster`` is parametrized: three nodes on one SQLite data directory (each its own ``serve``
process and port), one ``serve --processes 2`` (one port, the kernel spreads connections over
two children), and three nodes on one PostgreSQL database (skipped until that store exists).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import B64, Cluster, backend_env, children

CONFIG = """
[server]
shutdown_grace_seconds = 5
[scheduler]
interval_seconds = 1
[crypto]
destroy_grace_hours = 0
max_batch_items = 17000
[rate_limit]
auditor_requests_per_second = 20
auditor_burst = 20
service_requests_per_second = 100000
service_burst = 200000
[policy.tags.pci]
approvals_required = 1
approval_actions = ["rotate"]
"""
RATE, BURST, SYNC_INTERVAL = 20.0, 20, 0.1


@pytest.fixture(scope="module", params=["sqlite-nodes", "sqlite-processes", "postgres-nodes"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    backend, _, shape = str(request.param).partition("-")
    with backend_env(backend) as env:
        nodes = Cluster(tmp_path_factory.mktemp(request.param), backend, CONFIG, env)
        try:
            if shape == "processes":
                nodes.add("--processes", "2")
            else:
                for _ in range(3):
                    nodes.add()
            nodes.require_shared_audit()
            yield nodes
        finally:
            nodes.stop()


def on(c: Cluster, i: int) -> int:
    """The i-th node, round robin (one port with --processes: the kernel picks the child)."""
    return i % len(c.nodes)


def create(c: Cluster, i: int, *tags: str, name: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"algorithm": "aes-256-gcm", "usage": "encrypt", "tags": list(tags)}
    if name:
        body["name"] = name
    status, key = c.call(on(c, i), "POST", "/v1/keys", body)
    assert status == 201, key
    return key  # type: ignore[no-any-return]


def encrypt(c: Cluster, i: int, key: str, token: str | None = None) -> tuple[int, Any]:
    return c.call(on(c, i), "POST", f"/v1/keys/{key}/encrypt", {"plaintext": B64(b"hi")},
                  token=token or c.token("service"))


def together(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(0..n-1)`` in n threads released at once; their results in order."""
    barrier, results = threading.Barrier(n), [None] * n

    def run(k: int) -> None:
        barrier.wait()
        results[k] = work(k)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def audit_records(c: Cluster, action: str, key_id: str | None, i: int = 0) -> list[dict[str, Any]]:
    found, after = [], 0
    while True:
        status, page = c.call(i, "GET", f"/v1/audit?after_seq={after}&limit=1000")
        assert status == 200, page
        records = page["records"]
        found += [r for r in records if r["action"] == action and r.get("key_id") == key_id]
        if len(records) < 1000:  # each read is itself audited: stop at a short page
            return found
        after = records[-1]["seq"]


def settled_records(c: Cluster, action: str, key_id: str, i: int = 0) -> list[dict[str, Any]]:
    """The records of ``action`` once the one that settles it can be read through node ``i``
    (a node reads the shared log up to the head it knows)."""
    deadline = time.monotonic() + 10
    while True:
        records = audit_records(c, action, key_id, i)
        if "success" in [r["outcome"] for r in records] or time.monotonic() > deadline:
            return records
        time.sleep(0.3)


def test_a_revocation_on_one_node_is_refused_on_every_other_at_once(cluster: Cluster) -> None:
    key = create(cluster, 0)["id"]
    for i in range(3):
        assert encrypt(cluster, i, key)[0] == 200  # every node has the key hot in its cache
    status, _ = cluster.call(on(cluster, 0), "POST", f"/v1/keys/{key}/revoke", {})
    assert status == 200
    for i in range(1, 4):  # no wait at all
        status, reply = encrypt(cluster, i, key)
        assert status == 409, reply


def test_a_destroyed_key_is_refused_on_every_other_node_at_once(cluster: Cluster) -> None:
    key = create(cluster, 1)["id"]
    assert all(encrypt(cluster, i, key)[0] == 200 for i in range(3))
    assert cluster.call(on(cluster, 1), "POST", f"/v1/keys/{key}/destroy", {})[0] == 200
    for i in range(3):  # destroy_scheduled already refuses encryption everywhere; with no
        # grace the scheduler (every second) may have destroyed it meanwhile: 410 then
        assert encrypt(cluster, i, key)[0] in (409, 410)


def test_a_revoked_token_is_refused_by_every_node_at_once(cluster: Cluster) -> None:
    key = create(cluster, 0)["id"]
    jti = str(uuid.uuid4())
    token = cluster.token("service", "deny-me", jti=jti)
    for i in range(3):
        assert encrypt(cluster, i, key, token)[0] == 200  # cached as valid everywhere
    assert cluster.call(on(cluster, 2), "POST", "/v1/tokens/revoke", {"jti": jti})[0] in (200, 204)
    for i in range(3):
        assert encrypt(cluster, i, key, token)[0] == 401


def test_a_key_created_on_one_node_is_seen_by_the_others_within_a_second(
        cluster: Cluster) -> None:
    name = f"seen-{uuid.uuid4().hex[:8]}"
    key = create(cluster, 0, name=name)
    started = time.monotonic()
    for i in (1, 2):
        while cluster.call(on(cluster, i), "GET", f"/v1/keys/{name}")[0] != 200:
            assert time.monotonic() - started < 1.0, f"node {i} did not see the key in 1 s"
            time.sleep(0.02)
    assert cluster.call(on(cluster, 1), "POST", f"/v1/keys/{key['id']}/rotate", {})[0] == 200
    while cluster.call(on(cluster, 2), "GET", f"/v1/keys/{name}")[1]["primary_version"] != 2:
        assert time.monotonic() - started < 2.0, "rotation not seen within 1 s"
        time.sleep(0.02)


def test_twenty_concurrent_executions_over_nodes_run_exactly_once(cluster: Cluster) -> None:
    key = create(cluster, 0, "pci")["id"]
    alice = cluster.token("administrator", "alice")
    status, parked = cluster.call(on(cluster, 0), "POST", f"/v1/keys/{key}/rotate", {},
                                  token=alice)
    assert status == 202, parked
    approval = parked["approval"]["id"]
    status, voted = cluster.call(on(cluster, 1), "POST", f"/v1/approvals/{approval}/approve", {},
                                 token=cluster.token("operator", "bob"))
    assert status == 200 and voted["state"] == "approved", voted
    statuses = together(20, lambda k: cluster.call(
        on(cluster, k), "POST", f"/v1/keys/{key}/rotate", {}, token=alice,
        headers={"X-Approval-ID": approval})[0])
    assert sorted(statuses) == [200] + [409] * 19
    assert len(cluster.call(on(cluster, 2), "GET", f"/v1/keys/{key}")[1]["versions"]) == 2


def test_concurrent_rotations_through_different_nodes_lose_no_version(cluster: Cluster) -> None:
    key = create(cluster, 0)["id"]

    def rotate(k: int) -> list[int]:
        done = []
        for _ in range(3):
            status, reply = cluster.call(on(cluster, k), "POST", f"/v1/keys/{key}/rotate", {})
            assert status in (200, 409), reply
            if status == 200:
                done.append(reply["primary_version"])
        return done
    acknowledged = [v for got in together(9, rotate) for v in got]
    assert len(acknowledged) == len(set(acknowledged)), "two rotations got one version"
    described = cluster.call(on(cluster, 1), "GET", f"/v1/keys/{key}")[1]
    numbers = [v["version"] for v in described["versions"]]
    assert numbers == list(range(1, len(numbers) + 1))  # contiguous
    assert sorted(acknowledged) == numbers[1:]  # every acknowledged rotation is there, no other


def test_an_import_job_made_on_one_node_is_used_on_another(cluster: Cluster) -> None:
    """A client that fails over between creating an import job and importing through it
    finds the job on the next node (PostgreSQL: in the database; one host: in the shared data
    directory), and the job is used once, wherever the second use is tried."""
    from ferrohsm.crypto.importwrap import wrap_for_import
    status, job = cluster.call(0, "POST", "/v1/import-jobs", {}, role="operator")
    assert status == 201, job
    in_folder = cluster.data / "import-jobs" / f"{job['import_job_id']}.job"
    assert in_folder.exists() == (cluster.backend != "postgres")  # there: in the database
    material = os.urandom(32)
    body = {"algorithm": "aes-256-gcm", "usage": "encrypt", "import": {
        "import_job_id": job["import_job_id"], "wrapping_algorithm": "RSA_OAEP_SHA256",
        "wrapped_material": B64(wrap_for_import(job["public_key"], "RSA_OAEP_SHA256",
                                                material))}}
    last = len(cluster.nodes) - 1
    status, key = cluster.call(last, "POST", "/v1/keys", body, role="operator")
    assert status == 201, key
    assert key["origin"] == "imported" and key["id"] == job["import_job_id"]
    status, again = cluster.call(0, "POST", "/v1/keys", body, role="operator")
    assert status in (404, 409, 410), again  # the job went with its one use
    status, sealed = encrypt(cluster, 0, key["id"])
    assert status == 200, sealed


def leader(c: Cluster) -> int | None:
    for i in range(len(c.nodes)):
        if not c.alive(i):
            continue
        status, health = c.call(i, "GET", "/healthz")
        if status == 200 and health.get("cluster", {}).get("scheduler_leader"):
            return i
    return None


def wait_destroyed(c: Cluster, i: int, key: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while c.call(on(c, i), "GET", f"/v1/keys/{key}")[1]["state"] != "destroyed":
        assert time.monotonic() < deadline, "the scheduler did not destroy the key"
        time.sleep(0.2)


def test_scheduler_actions_run_exactly_once_in_the_cluster(cluster: Cluster) -> None:
    keys = [create(cluster, i)["id"] for i in range(4)]
    for i, key in enumerate(keys):
        assert cluster.call(on(cluster, i), "POST", f"/v1/keys/{key}/destroy", {})[0] == 200
    for key in keys:
        wait_destroyed(cluster, 0, key)
    time.sleep(2.5)  # two more ticks everywhere: nobody tries again
    for key in keys:
        records = settled_records(cluster, "key.destroy_complete", key)
        assert [r["outcome"] for r in records] == ["intent", "success"], records  # one attempt


def test_scheduler_leadership_is_handed_over_when_the_leader_dies(cluster: Cluster) -> None:
    if len(cluster.nodes) < 2:
        pytest.skip("one supervised group: its children: test_processes_restart_a_dead_child_reload_on_sighup_and_drain_on_sigterm")
    deadline = time.monotonic() + 5
    while (first := leader(cluster)) is None:
        assert time.monotonic() < deadline, "no node leads the scheduler"
        time.sleep(0.3)
    other = (first + 1) % len(cluster.nodes)
    cluster.kill(first)
    try:
        key = create(cluster, other)["id"]
        assert cluster.call(other, "POST", f"/v1/keys/{key}/destroy", {})[0] == 200
        wait_destroyed(cluster, other, key)  # only the new leader can have done it
        records = settled_records(cluster, "key.destroy_complete", key, other)
        assert [r["outcome"] for r in records] == ["intent", "success"]
        assert leader(cluster) not in (None, first)
    finally:
        cluster.start(first)  # joins the live nodes


def test_a_key_versions_aes_gcm_count_is_one_for_the_cluster(cluster: Cluster) -> None:
    """Every process that encrypts past its grace (32,768 with a version) reserves blocks of
    the count in the key record: the reservations of different processes add up, none lost to
    a race (compare-and-swap), and every node shows the one total (engine/gcmbudget.py)."""
    key = create(cluster, 0)["id"]
    item = {"plaintext": B64(b"m")}

    def load(k: int) -> None:
        for _ in range(2):  # 34,000 encryptions through one node (or child)
            status, reply = cluster.call(on(cluster, k), "POST", f"/v1/keys/{key}/encrypt",
                                         {"batch": [item] * 17000}, token=cluster.token("service"))
            assert status == 200 and len(reply["results"]) == 17000, str(reply)[:300]
    together(2, load)
    deadline, claims = time.monotonic() + 20, []
    while time.monotonic() < deadline:
        claims = [r for r in audit_records(cluster, "key.reserve_encryptions", key)
                  if r["outcome"] == "success"]
        if len(claims) >= (1 if len(cluster.nodes) == 1 else 2):
            break
        time.sleep(0.2)
    assert claims, "no reservation was recorded"
    grants = [r["details"]["encryptions_reserved"] for r in claims]
    totals = sorted(r["details"]["encryptions_reserved_total"] for r in claims)
    assert totals[-1] == sum(grants) >= 32_768 + 65_536  # nothing lost between processes
    for i in range(len(cluster.nodes)):
        status, shown = cluster.call(i, "GET", f"/v1/keys/{key}")
        assert status == 200 and shown["versions"][0]["encryptions_reserved"] >= totals[-1]


def test_an_actors_rate_limit_holds_across_the_cluster(cluster: Cluster) -> None:
    time.sleep(BURST / RATE + 0.5)  # a full bucket to start from
    token = cluster.token("auditor", f"rl-{uuid.uuid4().hex[:6]}")
    stop_at = time.monotonic() + 3.0
    counts = {"ok": 0, "limited": 0}
    lock = threading.Lock()

    def hammer(k: int) -> None:
        while time.monotonic() < stop_at:
            status, _ = cluster.call(on(cluster, k), "GET", "/v1/approvals?limit=1", token=token)
            with lock:
                counts["ok" if status == 200 else "limited"] += 1
            assert status in (200, 429)
    started = time.monotonic()
    together(6, hammer)
    elapsed = time.monotonic() - started
    nodes = max(len(cluster.nodes), 2)
    allowed = BURST + RATE * elapsed
    tolerance = 2 * RATE * SYNC_INTERVAL * nodes  # README "Running several nodes"
    print(f"\nrate limit: {counts['ok']} admitted in {elapsed:.2f} s, limit {allowed:.0f} "
          f"+ tolerance {tolerance:.0f}; {counts['limited']} refused")
    assert counts["limited"] > 0, "the load never reached the limit"
    assert counts["ok"] <= allowed + tolerance
    assert counts["ok"] >= RATE * elapsed * 0.5  # and it does not throttle far below it


def test_processes_restart_a_dead_child_reload_on_sighup_and_drain_on_sigterm(tmp_path: Path) -> None:
    nodes = Cluster(tmp_path, "sqlite", CONFIG)
    try:
        node = nodes.add("--processes", "2")
        nodes.require_shared_audit()
        assert node.proc is not None
        deadline = time.monotonic() + 10
        while len(before := children(node.proc.pid)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        key = create(nodes, 0)["id"]
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while True:  # the parent logs the death and starts a new child
            now = children(node.proc.pid)
            if len(now) == 2 and before[0] not in now:
                break
            assert time.monotonic() < deadline, node.log.read_text()[-2000:]
            time.sleep(0.1)
        assert "restarting it" in node.log.read_text()
        deadline = time.monotonic() + 10  # and the audit log says so, not only stderr
        while not any(f"(pid {before[0]}) killed by signal 9" in r["message"]
                      for r in audit_records(nodes, "system.startup", None)):
            assert time.monotonic() < deadline, "the restart is not in the audit log"
            time.sleep(0.2)
        if len(os.sched_getaffinity(0)) >= 2:  # pin_processes: one core each, the new one too
            cores = [os.sched_getaffinity(pid) for pid in now]
            assert all(len(c) == 1 for c in cores) and cores[0] != cores[1], cores
        for _ in range(6):  # both children serve, the new one included
            assert encrypt(nodes, 0, key)[0] == 200
        node.proc.send_signal(signal.SIGHUP)  # forwarded: every child reloads (and audits it)
        deadline = time.monotonic() + 10
        while len(audit_records(nodes, "auth.keyset_reload", None)) < 2:
            assert time.monotonic() < deadline, "SIGHUP did not reach both children"
            time.sleep(0.2)
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(30) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in now)
    finally:
        nodes.stop()
    exported = nodes.cli("audit", "export", "--output", str(tmp_path / "x.jsonl"))
    assert exported.returncode != 0  # nothing listens any more: one clear error


def test_processes_stop_when_a_child_refuses_to_start(tmp_path: Path) -> None:
    """A wrong master key refuses every child at start-up: the group exits 2, as one serve
    would, instead of restarting them for ever."""
    nodes = Cluster(tmp_path, "sqlite", CONFIG)
    try:
        nodes.add()  # one process writes the store's master-key check value
    finally:
        nodes.stop()
    nodes.env["FERROHSM_MASTER_KEY"] = B64(os.urandom(32))
    nodes.nodes[0].argv += ["--processes", "2"]
    nodes.start(0, wait=False)
    proc = nodes.nodes[0].proc
    assert proc is not None
    assert proc.wait(60) == 2
    log = nodes.nodes[0].log.read_text()
    assert "master key" in log and "refused to start" in log and "Traceback" not in log


def test_processes_show_every_process_on_metrics(tmp_path: Path) -> None:
    """``processes = 2`` on one port: whichever process a scrape reaches, it shows both
    processes' series, each sample labelled ``process``, and summed they count every request
    once (no counter jumps between scrapes that land on different processes)."""
    from prometheus_client.parser import text_string_to_metric_families
    nodes = Cluster(tmp_path, "sqlite", CONFIG)

    def processes_seen() -> set[str]:
        text = nodes.call(0, "GET", "/metrics")[1].decode()
        return {s.labels["process"] for f in text_string_to_metric_families(text)
                if f.name == "process_start_time_seconds" for s in f.samples}
    try:
        nodes.add("--processes", "2")
        deadline = time.monotonic() + 30  # ready means one child answers; wait for both
        while processes_seen() != {"0", "1"}:
            assert time.monotonic() < deadline, "the second process never showed up"
            time.sleep(0.2)
        key = create(nodes, 0)["id"]
        for _ in range(24):  # a new connection each: the kernel spreads them
            assert encrypt(nodes, 0, key)[0] == 200
        time.sleep(1.5)  # each process has written its series since (every second)
        for _ in range(8):
            status, text = nodes.call(0, "GET", "/metrics")
            assert status == 200
            families = list(text_string_to_metric_families(text.decode()))
            names = [f.name for f in families]
            assert len(names) == len(set(names))  # one HELP/TYPE per family, not per process
            by_name = {f.name: f for f in families}
            started = by_name["process_start_time_seconds"].samples
            assert sorted(s.labels["process"] for s in started) == ["0", "1"]
            encrypts = [s for s in by_name["ferrohsm_http_requests"].samples
                        if s.name == "ferrohsm_http_requests_total"
                        and s.labels["route"] == "/v1/keys/{key}/encrypt"
                        and s.labels["status"] == "200"]
            assert sum(s.value for s in encrypts) == 24
            assert {s.labels["process"] for s in encrypts} <= {"0", "1"}
    finally:
        nodes.stop()
    assert sorted(p.name for p in (nodes.data / "metrics").iterdir()) == [
        "process-0.json", "process-1.json"]
