"""A first start killed while it makes the audit log: the next start goes on, and a log cut back
to its first record in a store that has started before is still refused (real `ferrohsm
quickstart` processes; found by an outside crash drill).

Before: a kill between the genesis record and the first checkpoint read as "checkpoints deleted"
at every later start (only ``--accept-audit-loss`` got out, recording a deletion that never
happened); with the SQLite sink, a kill during the database's first write left a rollback
journal that start-up's read-only look could not undo ("attempt to write a readonly database").
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_serve_process import ROOT, call, start, stop
from test_truncation_detected import (
    create_keys,
    local_checkpoints,
    refused,
    serve,
    write_config,
)

KILLED_BEFORE_CHECKPOINT = """
import os, signal, sys
from ferrohsm.audit.sinkbase import ChainedSink

def killed(self):  # the genesis record is durable, its checkpoint not yet written
    os.kill(os.getpid(), signal.SIGKILL)
ChainedSink._checkpoint_opened = killed
from ferrohsm.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def first_start_killed(data: Path, config: Path, store: str,
                       extra_env: dict[str, str] | None = None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
    env.update(extra_env or {})
    result = subprocess.run([sys.executable, "-c", KILLED_BEFORE_CHECKPOINT, "quickstart",
                             "--data-dir", str(data), "--listen", "127.0.0.1:0", "--config",
                             str(config), "--key-store", store], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr


def logged_actions(data: Path, sink: str) -> list[str]:
    if sink == "sqlite":
        db = sqlite3.connect(f"file:{data / 'audit' / 'audit.sqlite3'}?mode=ro", uri=True)
        try:
            return [row[0] for row in db.execute("SELECT action FROM audit_log ORDER BY seq")]
        finally:
            db.close()
    return [line.split(b'"', 4)[3].decode() for line in
            (data / "audit" / "audit-000001.jsonl").read_bytes().splitlines()]


def verified(data: Path, sink: str) -> bool:
    log = data / "audit" / ("audit.sqlite3" if sink == "sqlite" else "")
    result = subprocess.run([sys.executable, "-m", "ferrohsm", "audit", "verify", str(log),
                             "--hmac-key-file", str(data / "audit-hmac.key")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    return result.returncode == 0 and result.stdout.startswith("OK")


@pytest.mark.parametrize("store,sink", [("filesystem", "file"), ("sqlite", "sqlite")])
def test_a_first_start_killed_before_its_first_checkpoint_starts_next_time(
        tmp_path: Path, store: str, sink: str) -> None:
    data, config = tmp_path / "data", write_config(tmp_path, sink=sink)
    first_start_killed(data, config, store)
    assert logged_actions(data, sink) == ["audit.genesis"] and not local_checkpoints(data)
    proc, exports = serve(data, config, "--key-store", store)
    try:
        key = create_keys(exports, 1)[0]
        assert call(exports, "GET", f"/v1/keys/{key}")[0] == 200
    finally:
        assert stop(proc) == 0
    actions = logged_actions(data, sink)
    assert actions[0] == "audit.genesis" and "integrity.audit_loss_accepted" not in actions
    assert local_checkpoints(data) and verified(data, sink)
    log = (tmp_path / "server.log").read_text()
    assert "its first start was interrupted; going on" in log


def test_with_postgres_a_first_start_killed_before_its_first_checkpoint_starts_next_time(
        tmp_path: Path) -> None:
    pytest.importorskip("ferrohsm.store.postgres")
    import pgserver

    from ferrohsm.audit.pgsink import stored_lines
    pgserver.skip_unless_available()
    with pgserver.running() as server:
        dsn = {"FERROHSM_POSTGRES_DSN": server.new_database()}
        data, config = tmp_path / "data", write_config(tmp_path, sink="postgres")
        first_start_killed(data, config, "postgres", dsn)
        assert [line[:25] for line in stored_lines(dsn["FERROHSM_POSTGRES_DSN"])] == [
            b'{"action":"audit.genesis"']
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
        proc, exports = start(data, "--config", str(config), "--key-store", "postgres",
                              env={**env, **dsn})
        try:
            create_keys(exports, 1)
        finally:
            assert stop(proc) == 0
        assert local_checkpoints(data) and signing_key_in_place(data)


def signing_key_in_place(data: Path) -> bool:
    """The key is put in place once its first checkpoint is durable (audit/anchor.py)."""
    audit = data / "audit"
    return (audit / "audit-signing-key.pem").exists() and not list(audit.glob("*.pending"))


def test_a_postgres_node_joining_a_cluster_killed_before_its_first_checkpoint_joins_next_time(
        tmp_path: Path) -> None:
    """A node new to a cluster that has keys: the log is not new, the store is not either, so
    nothing tells a first start cut short from checkpoints deleted, except that its signing key
    is only put in place with its first checkpoint. Before, the kill left the key in place and
    every later start was refused ("checkpoints ... are missing or empty")."""
    pytest.importorskip("ferrohsm.store.postgres")
    import pgserver
    pgserver.skip_unless_available()
    with pgserver.running() as server:
        dsn = {"FERROHSM_POSTGRES_DSN": server.new_database()}
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}, **dsn}
        data, config = tmp_path / "data", write_config(tmp_path, sink="postgres")
        node = ("--config", str(config), "--key-store", "postgres")
        proc, exports = start(data, *node, env=env)
        try:
            create_keys(exports, 1)
        finally:
            assert stop(proc) == 0
        joining = tmp_path / "joining"  # the same secrets, its own audit key and checkpoints
        shutil.copytree(data, joining)
        shutil.rmtree(joining / "audit")
        first_start_killed(joining, config, "postgres", dsn)
        assert not local_checkpoints(joining) and not signing_key_in_place(joining)
        proc, exports = start(joining, *node, env=env)
        try:
            create_keys(exports, 1)
        finally:
            assert stop(proc) == 0
        assert local_checkpoints(joining) and signing_key_in_place(joining)


@pytest.mark.parametrize("keys", [0, 2])
@pytest.mark.parametrize("store", ["filesystem", "memory"])
def test_a_log_cut_to_its_first_record_after_a_start_is_still_refused(
        tmp_path: Path, keys: int, store: str) -> None:
    """No keys is not enough: the master-key check value says the store has started (the
    memory store has none, and keeps nothing: it is never taken for a first start)."""
    data, config = tmp_path / "data", write_config(tmp_path)
    proc, exports = serve(data, config, "--key-store", store)
    create_keys(exports, keys)
    assert stop(proc) == 0
    log = data / "audit" / "audit-000001.jsonl"
    log.write_bytes(log.read_bytes().splitlines(keepends=True)[0])
    (data / "audit" / "checkpoints.jsonl").unlink()
    assert "checkpoints.jsonl) are missing or empty" in refused(data, config, "--key-store",
                                                                  store)


HOT_JOURNAL = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA cache_size=1")  # pages spill into the file: its journal is needed to undo
db.execute("BEGIN")
db.execute("CREATE TABLE filler (x BLOB)")
for _ in range(300):
    db.execute("INSERT INTO filler VALUES (?)", (os.urandom(2000),))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_database_left_with_a_rollback_journal_by_an_older_build_starts(
        tmp_path: Path) -> None:
    """What an older build left when killed during the database's first write (it made the
    file in place): start-up's look at the log undoes the journal instead of failing."""
    data, config = tmp_path / "data", write_config(tmp_path, sink="sqlite")
    database = data / "audit" / "audit.sqlite3"
    database.parent.mkdir(parents=True, mode=0o700)
    data.chmod(0o700)
    made = subprocess.run([sys.executable, "-c", HOT_JOURNAL, str(database)], timeout=60,
                          check=False)
    assert made.returncode == -signal.SIGKILL
    assert Path(f"{database}-journal").stat().st_size > 0
    proc, exports = serve(data, config, "--key-store", "sqlite")
    try:
        create_keys(exports, 1)
    finally:
        assert stop(proc) == 0
    assert logged_actions(data, "sqlite")[0] == "audit.genesis"
    assert verified(data, "sqlite")
