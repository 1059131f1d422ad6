"""Where a pinned server's audit fsyncs run ([audit] fsync_elsewhere, api/flusher.py), seen
from /proc of a real `ferrohsm serve`: pinned to one core, its io_uring worker runs on the
machine's other cores; with the setting off, or with processes = N (each core serving), on the
serving process's own core."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from cluster import B64, Cluster, children
from test_ring_flush import ring_allowed

pytestmark = [
    pytest.mark.skipif(not ring_allowed(), reason="io_uring is not available here"),
    pytest.mark.skipif(os.sched_getaffinity(0) != set(range(os.cpu_count() or 1))
                       or len(os.sched_getaffinity(0)) < 2,
                       reason="needs every core of a machine of two or more"),
]


def io_workers(pid: int) -> list[set[int]]:
    """The cores each io_uring worker of process ``pid`` may run on."""
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            if Path(f"/proc/{pid}/task/{tid}/comm").read_text().startswith("iou-wrk"):
                found.append(os.sched_getaffinity(int(tid)))
        except OSError:
            pass
    return found


def encrypt_some(nodes: Cluster) -> None:
    status, key = nodes.call(0, "POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                     "usage": "encrypt"})
    assert status == 201, key
    for _ in range(6):  # on the loop: each answer waits for a group's fsync through the ring
        status, _ = nodes.call(0, "POST", f"/v1/keys/{key['id']}/encrypt",
                               {"plaintext": B64(b"hi")}, token=nodes.token("service"))
        assert status == 200


def workers_of(pids: list[int]) -> list[set[int]]:
    deadline = time.monotonic() + 10
    while not (found := [cores for pid in pids for cores in io_workers(pid)]):
        assert time.monotonic() < deadline, "no io_uring worker ran an fsync"
        time.sleep(0.1)
    return found


@pytest.mark.parametrize("elsewhere", ["true", "false"])
def test_a_pinned_servers_fsyncs_run_on_the_other_cores(tmp_path: Path, elsewhere: str) -> None:
    nodes = Cluster(tmp_path, "sqlite", extra_env={
        "FERROHSM_AUDIT_SINK": "file", "FERROHSM_SERVER_PIN_CPU": "0",
        "FERROHSM_AUDIT_FSYNC_ELSEWHERE": elsewhere})
    try:
        node = nodes.add()
        encrypt_some(nodes)
        assert node.proc is not None
        others = set(range(os.cpu_count() or 1)) - {0}
        expected = others if elsewhere == "true" else {0}
        assert all(cores == expected for cores in workers_of([node.proc.pid]))
    finally:
        nodes.stop()


def test_processes_keep_their_fsyncs_on_their_own_cores(tmp_path: Path) -> None:
    nodes = Cluster(tmp_path, "sqlite", extra_env={"FERROHSM_AUDIT_SINK": "file"})
    try:
        node = nodes.add("--processes", "2")
        nodes.require_shared_audit()
        assert node.proc is not None
        for _ in range(3):
            encrypt_some(nodes)
        pids = children(node.proc.pid)
        for pid in pids:  # each child's workers, if it ran one: on that child's core only
            assert all(cores == os.sched_getaffinity(pid) for cores in io_workers(pid))
        assert workers_of(pids)
    finally:
        nodes.stop()
