"""``serve --processes 2`` with OTLP export on: each serving process starts its own span
exporter, and every request's spans reach a real OTLP/HTTP receiver exactly once, with span
ids no other process drew (each child reseeds its id generator after the fork), whichever
process served the request."""

from __future__ import annotations

import base64
import http.client
import json
import sys
import time
from collections import Counter
from pathlib import Path

from cluster import Cluster, children
from test_processes_spread import established, serving_children

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/otlpreceiver.py
from otlpreceiver import Receiver

CONFIG = """
[server]
shutdown_grace_seconds = 5
"""
CONNECTIONS, CALLS = 16, 5


def split_settles(pids: list[int], port: int) -> list[int]:
    """The established connections each process holds, once the count is this test's 16: a
    connection an earlier probe closed may still read as established for a moment on a
    loaded machine (CI once counted 17), and the kernel catches up within milliseconds."""
    deadline = time.monotonic() + 2
    while True:
        held = sorted(established(pids, port).values())
        if sum(held) == CONNECTIONS or time.monotonic() >= deadline:
            return held
        time.sleep(0.05)


def test_each_process_exports_the_spans_of_the_requests_it_served(tmp_path: Path) -> None:
    receiver = Receiver()
    nodes = Cluster(tmp_path, "sqlite", CONFIG, extra_env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "hsm-processes"})
    try:
        node = nodes.add("--processes", "2")
        pids = serving_children(nodes)
        time.sleep(0.3)  # its probes' closed connections are gone from both children's counts
        assert [len(children(pid)) for pid in pids] == [1, 1]  # an exporter each
        status, key = nodes.call(0, "POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                         "usage": "encrypt"})
        assert status == 201, key
        token = nodes.token("service", subject="spans-svc")
        body = json.dumps({"plaintext": base64.b64encode(b"spans").decode()})
        conns = [http.client.HTTPSConnection("127.0.0.1", node.port, context=nodes.ctx,
                                             timeout=30) for _ in range(CONNECTIONS)]
        try:
            for call in range(CALLS):
                for i, conn in enumerate(conns):
                    conn.request("POST", f"/v1/keys/{key['id']}/encrypt", body=body, headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "application/json", "X-Request-ID": f"spx-{i}-{call}"})
                    response = conn.getresponse()
                    response.read()
                    assert response.status == 200
                if call == 0:  # both processes serve: the connections are split between them
                    assert split_settles(pids, node.port) == [8, 8]
        finally:
            for conn in conns:
                conn.close()
    finally:
        nodes.stop()  # each exporter sends what it holds before its process exits
        receiver.close()
    spans = receiver.spans()
    servers = [s for s in spans if s["attributes"].get("ferrohsm.request_id", "").startswith(
        "spx-")]
    assert Counter(s["attributes"]["ferrohsm.request_id"] for s in servers) == Counter(
        f"spx-{i}-{call}" for i in range(CONNECTIONS) for call in range(CALLS))
    span_ids = [s["span_id"] for s in spans]
    assert len(span_ids) == len(set(span_ids))  # no id drawn twice, by either process
    assert len({s["trace_id"] for s in servers}) == len(servers)
    for server in servers:
        assert server["name"] == "POST /v1/keys/{key}/encrypt"
        assert server["attributes"]["user.id"] == "spans-svc"
        kids = [s for s in spans if s["parent"] == server["span_id"]]
        assert sorted(s["name"] for s in kids) == ["audit.flush", "authenticate",
                                                   "ferrohsm encrypt"]
        assert all(s["trace_id"] == server["trace_id"] for s in kids)
        flush = next(s for s in kids if s["name"] == "audit.flush")  # SQLite: write = flush
        assert server["start"] <= flush["start"] <= flush["end"] <= server["end"]
        assert flush["attributes"]["ferrohsm.audit.records"] == 1
