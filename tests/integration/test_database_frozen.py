"""A PostgreSQL server that stops answering, without closing anything, bounds a node's waits.

Before, a node whose database froze (a hung host; here every PostgreSQL process stopped with
SIGSTOP, so the kernel still accepts and acknowledges) waited for ever: the event loop's
freshness check first, then every request and /healthz behind it. Now each wait is cut one
second after ``[storage].postgres_timeout_seconds`` (store/pgwatch.py), the node answers 503 at
once while the database stays silent, /healthz says why, and the first answer ends it. Real
PostgreSQL (tests/pgserver.py), a real node, the public API only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import B64, ROOT, Cluster, children
from test_cluster_chaos import verify_export

sys.path.insert(0, str(ROOT / "tests"))
import pgserver

pytestmark = pytest.mark.slow
TIMEOUT = 2.0  # postgres_timeout_seconds: waits are cut at 3 s


@contextlib.contextmanager
def frozen(server: pgserver.PostgresServer) -> Iterator[None]:
    """Every process of the PostgreSQL server stopped (SIGSTOP), continued on leaving."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    pids = [postmaster, *children(postmaster)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def timed(call: Any, *args: Any, **kw: Any) -> tuple[float, tuple[int, Any]]:
    began = time.monotonic()
    answer = call(*args, **kw)
    return time.monotonic() - began, answer


@contextlib.contextmanager
def one_node(tmp: Path, dsn: str) -> Iterator[tuple[Cluster, str, Callable[[], tuple[int, Any]]]]:
    """A node on ``dsn`` with the short timeout, an AES key, and an encrypt call with it;
    stopped on leaving."""
    cluster = Cluster(tmp, backend="postgres", storage=f"postgres_timeout_seconds = {TIMEOUT}",
                      extra_env={"FERROHSM_POSTGRES_DSN": dsn})
    try:
        cluster.add()
        status, key = cluster.call(0, "POST", "/v1/keys",
                                   {"algorithm": "aes-256-gcm", "usage": "encrypt"})
        assert status == 201, key
        path = f"/v1/keys/{key['id']}/encrypt"

        def encrypt() -> tuple[int, Any]:
            return cluster.call(0, "POST", path, {"plaintext": B64(b"x")}, role="service")
        yield cluster, str(key["id"]), encrypt
    finally:
        cluster.stop()


def test_a_frozen_database_is_answered_503_in_bounded_time_and_recovered_from(
        tmp_path: Path) -> None:
    pgserver.skip_unless_available()
    with pgserver.running() as server, one_node(tmp_path, server.new_database()) as (
            cluster, key, encrypt):
        assert encrypt()[0] == 200

        def rotate() -> tuple[int, Any]:
            return cluster.call(0, "POST", f"/v1/keys/{key}/rotate", {})
        with frozen(server):
            # Requests in flight when it froze: each answered once its wait is cut.
            answers: list[tuple[float, tuple[int, Any]]] = []

            def ask(call: Callable[[], tuple[int, Any]]) -> None:
                answers.append(timed(call))
            threads = [threading.Thread(target=ask, args=(call,))
                       for call in (encrypt, encrypt, rotate, rotate)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert len(answers) == 4, "a request never came back"
            for took, (status, body) in answers:
                assert status == 503 and took < TIMEOUT + 1 + 4, (took, status, body)
            # Known silent now: everything that needs the database is refused at once,
            # and /healthz answers at once with the reason.
            took, (status, body) = timed(encrypt)
            assert status == 503 and took < 1.0, (took, status, body)
            for role in (None, "auditor"):
                took, (status, health) = timed(cluster.call, 0, "GET", "/healthz", role=role)
                assert status == 503 and took < 1.0, (took, status, health)
                assert health["status"] == "degraded"
            # The reason is a detail for an Auditor, whose token cannot be checked against
            # the revoked-token list meanwhile (fail closed): it is in the server log.
            assert set(health) <= {"status", "version", "auth", "rate_limit", "cache", "tls",
                                   "sealed"}, health
            took, (status, _) = timed(cluster.call, 0, "GET", "/readyz", role=None)
            assert status == 503 and took < TIMEOUT + 2, took
            took, (status, metrics) = timed(cluster.call, 0, "GET", "/metrics", role=None)
            assert status == 200 and took < 1.0, took  # keys by state left out, the rest
            assert b"ferrohsm_audit_healthy 0" in metrics and b"ferrohsm_keys{" not in metrics
        # The first answer ends it: the same node serves again, nothing restarted.
        deadline = time.monotonic() + 20
        while encrypt()[0] != 200 or rotate()[0] != 200:
            assert time.monotonic() < deadline, "the node did not recover"
            time.sleep(0.2)
        status, health = cluster.call(0, "GET", "/healthz", role="auditor")
        assert status == 200 and health["status"] == "ok", health
        assert health["store"]["waits_cut"] >= 1
        assert cluster.alive(0)
        said = ("PostgreSQL database did not answer within", "PostgreSQL database answers again")
        deadline = time.monotonic() + 10  # log lines are written in batches
        while not all(line in cluster.nodes[0].log.read_text() for line in said):
            assert time.monotonic() < deadline, said
            time.sleep(0.2)
        verify_export(cluster, tmp_path)  # every record the node acknowledged, intact


def test_a_lock_held_elsewhere_is_a_clean_timeout_not_a_silent_database(tmp_path: Path) -> None:
    """The audit log's append lock held by another session (a stopped node's, here a session
    of the test's) for longer than the timeout: each write ends with the server's own
    statement timeout (503), the database is not taken for silent (no session cut), and
    everything goes on once the lock is free. Before, the audit sessions had no server-side
    deadline: the watchdog cut their lock waits and declared a live database silent, and each
    cut left a backend queued on the lock (an outside drill). And once a wait timed out, the
    lock is only tried until it is had: the audit batch is written on the event loop, which
    waited a timeout per turn (a second red team)."""
    import psycopg

    from ferrohsm.audit.pgsink import LOCK_APPEND, LOCK_CLASS
    pgserver.skip_unless_available()
    with pgserver.running() as server:
        dsn = server.new_database()
        with one_node(tmp_path, dsn) as (cluster, _, encrypt):
            with psycopg.connect(dsn) as holder:
                holder.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, LOCK_APPEND))
                took, (status, body) = timed(encrypt)
                assert status == 503 and TIMEOUT <= took < TIMEOUT + 1, (took, status, body)
                # From then on the lock is only tried: the event loop waits for it no more
                # (it did, a timeout per turn, holding /healthz and everything else).
                for _ in range(3):
                    took, (status, body) = timed(encrypt)
                    assert status == 503 and took < 1.0, (took, status, body)
                    assert "append lock is held" in body["error"]["message"], body
                took, (status, health) = timed(cluster.call, 0, "GET", "/healthz",
                                               role="auditor")
                assert status == 503 and took < 1.0, (took, health)
                assert "audit" in health["reason"], health  # says why
                assert health["store"]["waits_cut"] == 0 and health["store"].get(
                    "reachable", True), health
                holder.rollback()  # the lock is free
            deadline = time.monotonic() + 10
            while encrypt()[0] != 200:
                assert time.monotonic() < deadline, "the node did not go on"
                time.sleep(0.2)
            with psycopg.connect(dsn, autocommit=True) as conn:
                waiting = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type"
                                       " = 'Lock'").fetchone()
            assert waiting == (0,)
            log = cluster.nodes[0].log.read_text()
            assert "did not answer within" not in log
