"""One audit log through any node: real servers sharing a log, exports, and the real verifier.

* Two servers (each its own runtime, port and audit sink) on one data directory with the SQLite
  key store, the audit log in files or in PostgreSQL: records written through either node are
  one chain, and an export through either node (``GET /v1/audit``, what ``ferrohsm audit
  export`` pages through) holds both nodes' records and verifies offline.
* An export of a PostgreSQL log, tampered with every way the verifier knows: ``ferrohsm audit
  verify`` exits 1 naming the record (a cut tail through a node's signed checkpoint).
* The database unreachable under a node: its records are refused (``degraded()``, what /healthz
  shows) until it is back; a database behind what the node wrote stops the sink.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from live import LiveServer

from ferrohsm.audit.chain import AuditEvent, record_line, seal_record_line
from ferrohsm.audit.offline import load_checkpoints
from ferrohsm.audit.pgsink import PostgresSink, stored_lines
from ferrohsm.audit.verify import verify_paths
from ferrohsm.domain.errors import AuditUnavailable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # tests/pgserver.py, beside the test folders
import pgserver  # noqa: E402  # after its folder is on the path

KEY = hashlib.sha256(b"one log audit key").digest()


@pytest.fixture(scope="module")
def postgres() -> Iterator[pgserver.PostgresServer]:
    pgserver.skip_unless_available()
    with pgserver.running() as server:
        yield server


def export(node: LiveServer, limit: int = 7) -> list[bytes]:
    """What ``ferrohsm audit export`` writes, paging like it (small pages: many of them)."""
    lines: list[bytes] = []
    after: int | None = 0
    while after is not None:
        status, _, page = node.call("GET", f"/v1/audit?after_seq={after}&limit={limit}")
        assert status == 200, page
        lines += [record_line(r) for r in page["records"]]
        after = page["next_after_seq"]
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("sink", ["file", "postgres"])
def test_an_export_through_any_node_holds_every_nodes_records(
        sink: str, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "shared"
    overrides: dict[tuple[str, str], Any] = {("storage", "data_dir"): str(data),
                                             ("audit", "sink"): sink}
    if sink == "postgres":
        server: pgserver.PostgresServer = request.getfixturevalue("postgres")
        monkeypatch.setenv("FERROHSM_POSTGRES_DSN", server.new_database())
    a = LiveServer(tmp_path / "a", key_store="sqlite", overrides=overrides)
    b = LiveServer(tmp_path / "b", key_store="sqlite", overrides=overrides, secrets_=a.secrets)
    try:
        status, _, key = a.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                     "usage": "encrypt"})
        assert status == 201, key
        for node in (b, a, b):  # the key is in the shared store: any node uses it
            status, _, body = node.call("POST", f"/v1/keys/{key['id']}/encrypt",
                                        {"plaintext": "aGVsbG8="}, role="service")
            assert status == 200, body
        idle_b_sees_a = b.call("GET", "/v1/audit?after_seq=0&limit=1000")[2]["records"]
        assert any(r["action"] == "key.create" for r in idle_b_sees_a)
        via_a, via_b = export(a), export(b)
    finally:
        a.close()
        b.close()
    shortest = min(len(via_a), len(via_b))
    assert via_a[:shortest] == via_b[:shortest]  # one log, whichever node is asked
    records = [json.loads(line) for line in via_b]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert sum(r["action"] == "crypto.encrypt" for r in records) == 3
    target = tmp_path / "export.jsonl"
    target.write_bytes(b"".join(line + b"\n" for line in via_b))
    result = verify_paths([str(target)], a.secrets.audit_hmac_key)
    assert result.ok, result.problem


# ---- tampering with a PostgreSQL export, caught by the real `ferrohsm audit verify` -------------

def _insert_forged(lines: list[bytes]) -> list[bytes]:
    previous = json.loads(lines[2])
    forged = seal_record_line(AuditEvent(actor="mallory", role="operator", action="key.encrypt",
                                         outcome="success", message="forged"),
                              seq=4, prev_hash=previous["hash"], ts=_ts(lines[3]),
                              record_id="forged", hmac_key=b"k" * 32)[1]
    return [*lines[:3], forged, *lines[3:]]


def _ts(line: bytes) -> Any:
    from datetime import datetime
    return datetime.fromisoformat(json.loads(line)["ts"].replace("Z", "+00:00"))


TAMPERING: dict[str, tuple[Callable[[list[bytes]], list[bytes]], str, int]] = {
    "modify": (lambda ls: [*ls[:3], ls[3].replace(b'"message":"event 2"', b'"message":"event X"'),
                           *ls[4:]], "modified", 4),
    "delete": (lambda ls: ls[:3] + ls[4:], "deleted", 4),
    "reorder": (lambda ls: [*ls[:3], ls[4], ls[3], *ls[5:]], "reordered", 4),
    "insert": (_insert_forged, "inserted", 4),
    "truncate": (lambda ls: ls[:-3], "truncated", 11),
}


@pytest.fixture(scope="module")
def pg_export(postgres: pgserver.PostgresServer, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[list[bytes], Path]:
    """Ten records in a PostgreSQL log written by two nodes, its stored lines, and one node's
    folder (its checkpoints and public key)."""
    dsn = postgres.new_database()
    root = tmp_path_factory.mktemp("pgexport")
    first = PostgresSink(dsn, KEY, directory=str(root / "node1"))
    second = PostgresSink(dsn, KEY, directory=str(root / "node2"))
    for n in range(10):
        (first, second)[n % 2].append(AuditEvent(actor="alice", role="operator",
                                                 action="key.encrypt", outcome="success",
                                                 message=f"event {n}"))
    second.close()
    first.close()  # signs the head (seq 11): the truncation below is behind it
    (root / "hmac.key").write_bytes(KEY)
    (root / "hmac.key").chmod(0o600)
    return list(stored_lines(dsn)), root


def run_verify(root: Path, lines: list[bytes]) -> subprocess.CompletedProcess[str]:
    target = root / "export.jsonl"
    target.write_bytes(b"".join(line + b"\n" for line in lines))
    node = root / "node1"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
    return subprocess.run([sys.executable, "-m", "ferrohsm", "audit", "verify", str(target),
                           "--hmac-key-file", str(root / "hmac.key"),
                           "--checkpoint", str(node / "checkpoints.jsonl"),
                           "--public-key", str(node / "audit-signing-key.pub.pem")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_untouched_postgres_export_verifies(pg_export: tuple[list[bytes], Path]) -> None:
    lines, root = pg_export
    done = run_verify(root, lines)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK: 11 records verified")
    assert load_checkpoints(str(root / "node1" / "checkpoints.jsonl"))[-1]["seq"] == 11


@pytest.mark.parametrize("name", list(TAMPERING))
def test_verify_names_each_tampering_of_a_postgres_export(
        pg_export: tuple[list[bytes], Path], name: str) -> None:
    lines, root = pg_export
    change, kind, seq = TAMPERING[name]
    done = run_verify(root, change(list(lines)))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith(f"FAIL: record seq {seq}: {kind}:"), done.stdout


# ---- the database failing under a node -------------------------------------------------------

def _admin(server: pgserver.PostgresServer, sql: str, *params: str) -> None:
    import psycopg
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(sql.encode(), params or None)


def test_an_unreachable_database_refuses_records_until_it_is_back(
        postgres: pgserver.PostgresServer, tmp_path: Path) -> None:
    dsn = postgres.new_database()
    name = dsn.rsplit("/", 1)[1]
    sink = PostgresSink(dsn, KEY, directory=str(tmp_path / "node"))
    before = sink.append(AuditEvent(actor="a", role="r", action="key.sign", outcome="success",
                                    message="before"))
    _admin(postgres, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    _admin(postgres, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s", name)
    try:
        with pytest.raises(AuditUnavailable, match="audit"):
            sink.append(AuditEvent(actor="a", role="r", action="key.sign", outcome="success",
                                   message="while down"))
        reason = sink.degraded()
        assert reason is not None and "audit" in reason  # what /healthz reports
        assert dsn not in reason and sink.healthy()  # nothing was half-written: retried later
    finally:
        _admin(postgres, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    after = sink.append(AuditEvent(actor="a", role="r", action="key.sign", outcome="success",
                                   message="after"))
    assert after["seq"] == before["seq"] + 1 and sink.degraded() is None
    sink.close()
    assert [json.loads(x)["message"] for x in stored_lines(dsn)][-2:] == ["before", "after"]


def test_a_read_after_the_database_cut_its_session_is_answered(
        postgres: pgserver.PostgresServer, tmp_path: Path) -> None:
    """After a database restart the idle reader session is found cut only when used: the read
    is repeated once on a new session instead of answering 503."""
    dsn = postgres.new_database()
    name = dsn.rsplit("/", 1)[1]
    sink = PostgresSink(dsn, KEY, directory=str(tmp_path / "node"))
    try:
        sink.append(AuditEvent(actor="a", role="r", action="key.sign", outcome="success",
                               message="one"))
        assert len(sink.read(0, 10)) >= 2  # the reader session is open now
        _admin(postgres, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", name)
        assert [r["message"] for r in sink.read(0, 10)][-1] == "one"
    finally:
        sink.close()


def _event(message: str) -> AuditEvent:
    return AuditEvent(actor="a", role="r", action="key.sign", outcome="success", message=message)


def _stored(dsn: str) -> list[tuple[int, str]]:
    return [(json.loads(x)["seq"], json.loads(x)["message"]) for x in stored_lines(dsn)]


def test_a_write_after_the_database_cut_its_session_is_written(
        postgres: pgserver.PostgresServer, tmp_path: Path) -> None:
    """After a database restart the idle writer session is found cut only when a batch is
    sent on it: the batch is sent again on a new session instead of answering 503."""
    dsn = postgres.new_database()
    name = dsn.rsplit("/", 1)[1]
    sink = PostgresSink(dsn, KEY, directory=str(tmp_path / "node"))
    try:
        one = sink.append(_event("one"))
        _admin(postgres, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", name)
        two = sink.append(_event("two"))
        assert two["seq"] == one["seq"] + 1 and sink.degraded() is None
    finally:
        sink.close()
    stored = _stored(dsn)
    assert [m for _, m in stored].count("two") == 1
    assert [seq for seq, _ in stored] == list(range(1, len(stored) + 1))


class _SessionLostAtCommit(PostgresSink):
    """The session breaks once, at a COMMIT: after it was carried out (``committed``: its
    answer was lost), or before it reached the server."""

    committed = False
    cut = True  # False: psycopg gave up mid-pipeline, the connection says it is fine
    armed = False  # armed by the test once the sink is open

    def _commit(self, conn: Any) -> None:
        if not self.armed:
            super()._commit(conn)
            return
        self.armed = False
        if self.committed:
            super()._commit(conn)
        if self.cut:
            conn.close()
        raise self._psycopg.OperationalError("cannot exit pipeline mode while busy")


@pytest.mark.parametrize(("committed", "close"), [(True, True), (False, True), (True, False)],
                         ids=["answer-lost", "never-committed", "pipeline-gave-up"])
def test_a_batch_sent_again_after_a_lost_session_is_stored_once(
        postgres: pgserver.PostgresServer, tmp_path: Path, committed: bool, close: bool) -> None:
    """The third case from a red team: a backend terminated under a pipeline left psycopg
    saying "cannot exit pipeline mode while busy" on a connection neither closed nor broken;
    the batch was committed and the client told 503."""
    dsn = postgres.new_database()
    sink = _SessionLostAtCommit(dsn, KEY, directory=str(tmp_path / "node"))
    try:
        sink.append(_event("one"))
        sink.committed, sink.cut, sink.armed = committed, close, True
        two = sink.append(_event("two"))
        three = sink.append(_event("three"))
        assert three["seq"] == two["seq"] + 1
    finally:
        sink.close()
    stored = _stored(dsn)
    assert [m for _, m in stored].count("two") == 1
    assert [seq for seq, _ in stored] == list(range(1, len(stored) + 1))
    assert (two["seq"], "two") in stored


def test_a_database_behind_what_the_node_wrote_stops_the_sink(
        postgres: pgserver.PostgresServer, tmp_path: Path) -> None:
    """A restored or failed-over database that lost the node's last commits: fail closed."""
    dsn = postgres.new_database()
    sink = PostgresSink(dsn, KEY, directory=str(tmp_path / "node"))
    for n in range(3):
        sink.append(AuditEvent(actor="a", role="r", action="key.sign", outcome="success",
                               message=f"m{n}"))
    sink.make_checkpoint()  # covers seq 4 (what the time checkpoints do while records flow)
    import psycopg
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq > 2")
    with pytest.raises(AuditUnavailable, match="truncated or rolled back"):
        sink.append(AuditEvent(actor="a", role="r", action="key.sign", outcome="success",
                               message="lost"))
    assert not sink.healthy()
    sink.close()
    with pytest.raises(AuditUnavailable, match="shorter than its last signed checkpoint"):
        PostgresSink(dsn, KEY, directory=str(tmp_path / "node"))


def test_a_newer_audit_schema_is_refused_before_the_node_makes_its_signing_key(
        postgres: pgserver.PostgresServer, tmp_path: Path) -> None:
    import psycopg

    from ferrohsm.audit.pgsink import SCHEMA_VERSION
    dsn = postgres.new_database()
    PostgresSink(dsn, KEY, directory=str(tmp_path / "first")).close()
    with psycopg.connect(dsn) as conn:  # a later FerroHSM migrated the database further
        conn.execute("INSERT INTO audit_schema_migrations (version) VALUES (%s)",
                     (SCHEMA_VERSION + 1,))
    joining = tmp_path / "joining"
    with pytest.raises(AuditUnavailable, match=f"schema is version {SCHEMA_VERSION + 1}, newer "
                                               "than the .* upgrade FerroHSM"):
        PostgresSink(dsn, KEY, directory=str(joining))
    assert not joining.exists()  # no signing key, no checkpoint file: nothing to clean up
