"""Nodes on PostgreSQL come back by themselves after the database restarts under key changes.

A restart drops every session: a change whose store write or settling record was in flight
then leaves the node refusing records until that record is written (audit/settling.py), and the
session holding the node's cluster membership lock is gone until the node takes it again
(store/pg_shared.py ``keep``). Before, the node stayed failed until restarted, and a node
starting meanwhile took itself for the only one alive and ran the cold start-up checks beside
live writers. Real PostgreSQL (tests/pgserver.py), real nodes, the public API only.
"""

from __future__ import annotations

import contextlib
import http.client
import sys
import threading
import time
from pathlib import Path

import pytest
from cluster import ROOT, Cluster
from test_cluster_chaos import verify_export

sys.path.insert(0, str(ROOT / "tests"))
import pgserver

from ferrohsm.store.pg_shared import NODES_LOCK

pytestmark = pytest.mark.slow


def _membership_holders(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' "
            "AND ((classid::bigint << 32) | objid::bigint) = %s", (NODES_LOCK,)).fetchone()
    return int(row[0]) if row else 0


def _until(check: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if check():  # type: ignore[operator]
                return True
        time.sleep(0.2)
    return False


def test_nodes_recover_from_a_database_restart_under_rotations(tmp_path: Path) -> None:
    pgserver.skip_unless_available()
    with pgserver.running() as server:
        dsn = server.new_database()
        cluster = Cluster(tmp_path, backend="postgres",
                          extra_env={"FERROHSM_POSTGRES_DSN": dsn})
        try:
            for _ in range(2):
                cluster.add()
            status, key = cluster.call(0, "POST", "/v1/keys",
                                       {"algorithm": "aes-256-gcm", "usage": "encrypt"})
            assert status == 201, key
            assert _until(lambda: _membership_holders(dsn) == 2, 10)
            stop, acked = threading.Event(), []

            def rotate(node: int) -> None:
                while not stop.is_set():
                    with contextlib.suppress(OSError, http.client.HTTPException):
                        status, body = cluster.call(node, "POST",
                                                    f"/v1/keys/{key['id']}/rotate", {})
                        if status == 200:
                            acked.append(body["primary_version"])
            threads = [threading.Thread(target=rotate, args=(i % 2,)) for i in range(6)]
            for thread in threads:
                thread.start()
            time.sleep(1.0)
            server.restart()  # every session dropped, changes in flight
            time.sleep(1.0)
            stop.set()
            for thread in threads:
                thread.join()
            for node in range(2):  # ready again without a restart of their own
                assert _until(lambda n=node: cluster.call(n, "GET", "/readyz",
                                                          role=None)[0] == 200, 20), \
                    cluster.nodes[node].log.read_text()[-2000:]
            assert _until(lambda: _membership_holders(dsn) == 2, 10)  # both count as alive
            for node in range(2):
                assert cluster.call(node, "POST", f"/v1/keys/{key['id']}/rotate", {})[0] == 200
            status, final = cluster.call(1, "GET", f"/v1/keys/{key['id']}")
            versions = [v["version"] for v in final["versions"]]
            assert versions == list(range(1, len(versions) + 1))  # contiguous, none lost
            assert set(acked) <= set(versions)
            verify_export(cluster, tmp_path)
        finally:
            cluster.stop()
