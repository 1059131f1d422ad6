"""``serve --processes 2``: new connections split evenly over the children (api/spread.py),
counted from /proc (each child's established TCP sockets on the port); a child killed with -9
is handed nothing (every connection made meanwhile is answered by the survivor), and the child
started in its place takes its share again."""

from __future__ import annotations

import http.client
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from cluster import Cluster, children

# The server's processes are not dumpable (cli/nodump.py): their /proc/PID/fd is root's.
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="reads the server's /proc/PID/fd: "
                                "needs root (the server's processes are not dumpable)")

CONFIG = """
[server]
shutdown_grace_seconds = 5
"""


def established(pids: list[int], port: int) -> Counter[int]:
    """Established TCP connections on ``port`` held by each of ``pids``."""
    owner: dict[int, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                owner[int(link[8:-1])] = pid
    held: Counter[int] = Counter({pid: 0 for pid in pids})
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if fields[3] == "01" and local_port == port and int(fields[9]) in owner:
                held[owner[int(fields[9])]] += 1
    return held


def open_connections(nodes: Cluster, count: int) -> list[http.client.HTTPSConnection]:
    """``count`` keep-alive connections, each answered once (so each is adopted and served)."""
    conns = []
    token = nodes.token("administrator")
    for _ in range(count):
        conn = http.client.HTTPSConnection("127.0.0.1", nodes.nodes[0].port, context=nodes.ctx,
                                           timeout=30)
        conn.request("GET", "/v1/keys", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        conns.append(conn)
    return conns


def serving_children(nodes: Cluster) -> list[int]:
    """The group's two children, once both accept connections."""
    proc = nodes.nodes[0].proc
    assert proc is not None
    deadline = time.monotonic() + 30
    while True:
        pids = children(proc.pid)
        if len(pids) == 2:
            conns = open_connections(nodes, 8)
            held = established(pids, nodes.nodes[0].port)
            for conn in conns:
                conn.close()
            if all(held.values()):
                return pids
        assert time.monotonic() < deadline, nodes.nodes[0].log.read_text()[-2000:]
        time.sleep(0.2)


def test_connections_split_evenly_and_a_dead_child_is_handed_none(tmp_path: Path) -> None:
    nodes = Cluster(tmp_path, "sqlite", CONFIG)
    try:
        node = nodes.add("--processes", "2")
        pids = serving_children(nodes)
        time.sleep(0.3)  # the closed connections are gone from both children's counts
        for _ in range(3):  # a hash alone gives 8/8 one time in five: three in a row is no luck
            conns = open_connections(nodes, 16)
            assert sorted(established(pids, node.port).values()) == [8, 8]
            for conn in conns:
                conn.close()
            time.sleep(0.3)
        os.kill(pids[0], signal.SIGKILL)
        time.sleep(0.3)  # the parent has reaped it (it looks every 0.1 s), not restarted it
        started = time.monotonic()
        conns = open_connections(nodes, 8)  # all answered by the survivor, none held back
        assert time.monotonic() - started < 5
        assert established([pids[1]], node.port)[pids[1]] == 8
        for conn in conns:
            conn.close()
        restarted = serving_children(nodes)  # the parent started a new child in its slot
        assert pids[1] in restarted and pids[0] not in restarted
        time.sleep(0.3)
        conns = open_connections(nodes, 16)  # and it takes its share again
        assert sorted(established(restarted, node.port).values()) == [8, 8]
        for conn in conns:
            conn.close()
    finally:
        nodes.stop()
