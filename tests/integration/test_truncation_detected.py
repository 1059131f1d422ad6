"""Truncation is detected, and store loss is loud: real `ferrohsm quickstart` processes, kill -9,
files cut or deleted underneath, then the real `ferrohsm audit verify` and a restart.

What each test proves is in its name; what can NOT be detected (a cut after the newest checkpoint
that reached a witness, a consistent rollback without a witness) is pinned here too, so the README
section on it stays true.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_serve_process import ROOT, call, start, stop

INTERVAL = 0.3


def write_config(tmp: Path, **audit: object) -> Path:
    lines = ["[audit]", f"checkpoint_interval_seconds = {INTERVAL}"]
    lines += [f"{name} = {json.dumps(value)}" for name, value in audit.items()]
    path = tmp / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def serve(data: Path, config: Path, *extra: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    return start(data, "--config", str(config), *extra)


def refused(data: Path, config: Path, *extra: str) -> str:
    """Start-up must fail: its one-line reason on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
    result = subprocess.run([sys.executable, "-m", "ferrohsm", "quickstart", "--data-dir",
                             str(data), "--listen", "127.0.0.1:0", "--config", str(config),
                             *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert not result.stdout and "Traceback" not in result.stderr
    return result.stderr


def verify(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferrohsm", "audit", "verify", str(data / "audit"),
                           "--hmac-key-file", str(data / "audit-hmac.key"), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def segment(data: Path) -> Path:
    segments = sorted((data / "audit").glob("audit-*.jsonl"))
    assert len(segments) == 1
    return segments[0]


def records(data: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in segment(data).read_bytes().splitlines()]


def checkpoints(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def local_checkpoints(data: Path) -> list[dict[str, Any]]:
    return checkpoints(data / "audit" / "checkpoints.jsonl")


def cut_log(data: Path, keep: int) -> None:
    """Keep the first ``keep`` records: what someone who deletes the last lines leaves."""
    lines = segment(data).read_bytes().splitlines(keepends=True)
    segment(data).write_bytes(b"".join(lines[:keep]))


def wait_for(what: Callable[[], bool], timeout: float = 10.0) -> float:
    started = time.monotonic()
    while not what():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.05)
    return time.monotonic() - started


def create_keys(exports: dict[str, str], count: int) -> list[str]:
    ids = []
    for _ in range(count):
        status, key = call(exports, "POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                         "usage": "encrypt"})
        assert status == 201, key
        ids.append(key["id"])
    return ids


def kill_9(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    if proc.stdout:
        proc.stdout.close()


def crashed_after_checkpoint(tmp_path: Path) -> tuple[Path, Path, int]:
    """A server that wrote records, had them covered by a time checkpoint, and was killed:
    (data dir, config, seq of the newest checkpoint)."""
    data, config = tmp_path / "data", write_config(tmp_path)
    proc, exports = serve(data, config)
    create_keys(exports, 6)
    head = len(records(data))
    wait_for(lambda: max(c["seq"] for c in local_checkpoints(data)) >= head)
    kill_9(proc)
    newest = max(c["seq"] for c in local_checkpoints(data))
    assert newest == len(records(data))
    return data, config, newest


# ---- the tail cut after a crash ------------------------------------------------------------------

def test_tail_cut_after_kill_9_fails_verify_and_start_up(tmp_path: Path) -> None:
    data, config, newest = crashed_after_checkpoint(tmp_path)
    assert verify(data).returncode == 0  # intact: the checkpoints beside the log are used
    cut_log(data, newest - 3)
    result = verify(data)
    assert result.returncode == 1
    assert f"FAIL: record seq {newest}: truncated:" in result.stdout
    assert f"records {newest - 2}..{newest} were removed" in result.stdout
    assert "shorter than its last signed checkpoint" in refused(data, config)


def test_tail_cut_with_the_checkpoints_deleted_is_still_caught(tmp_path: Path) -> None:
    data, config, newest = crashed_after_checkpoint(tmp_path)
    cut_log(data, newest - 3)
    (data / "audit" / "checkpoints.jsonl").unlink()
    result = verify(data)
    assert result.returncode == 1 and ": no_checkpoints: " in result.stdout
    skipped = verify(data, "--no-checkpoints")  # the chain alone: passes, and says so loudly
    assert skipped.returncode == 0
    assert skipped.stdout.startswith("OK (WARNING: checkpoints NOT checked)")
    assert "note: checkpoints NOT checked (--no-checkpoints)" in skipped.stdout
    assert "checkpoints.jsonl) are missing or empty" in refused(data, config)
    proc, _ = serve(data, config, "--accept-audit-loss")  # an explicit, audited acceptance
    assert stop(proc) == 0
    accepted = [r for r in records(data) if r["action"] == "integrity.audit_loss_accepted"]
    assert len(accepted) == 1 and "checkpoints.jsonl" in accepted[0]["message"]
    assert verify(data).returncode == 0  # from here on the log is covered again


def test_an_export_held_against_no_checkpoint_says_so_and_against_them_is_strict(
        tmp_path: Path) -> None:
    """A copy of the log with no checkpoints beside it (an export) cannot show a cut tail: it
    verifies with the same loud warning as --no-checkpoints, in text and JSON. Held against
    the node's checkpoints it must reach the newest one (copied before the export)."""
    data, _, newest = crashed_after_checkpoint(tmp_path)
    export = tmp_path / "export" / "audit.jsonl"
    export.parent.mkdir()
    export.write_bytes(segment(data).read_bytes())
    key = str(data / "audit-hmac.key")

    def verify_file(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ferrohsm", "audit", "verify", str(export),
                               "--hmac-key-file", key, *extra], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, check=False)

    alone = verify_file()
    assert alone.returncode == 0, alone.stdout
    assert alone.stdout.startswith("OK (WARNING: checkpoints NOT checked)")
    assert "none given and no checkpoints.jsonl beside the input" in alone.stdout
    as_json = json.loads(verify_file("--json").stdout)
    assert as_json["ok"] and as_json["checkpoints_skipped"] is True
    held = verify_file("--checkpoint", str(data / "audit" / "checkpoints.jsonl"))
    assert held.returncode == 0 and "WARNING" not in held.stdout, held.stdout
    lines = export.read_bytes().splitlines(keepends=True)
    export.write_bytes(b"".join(lines[:newest - 3]))
    cut = verify_file("--checkpoint", str(data / "audit" / "checkpoints.jsonl"))
    assert cut.returncode == 1 and ": truncated: " in cut.stdout, cut.stdout

def test_checkpoints_without_a_key_to_check_them_are_refused(tmp_path: Path) -> None:
    """Anyone can write a checkpoint line; only its signature makes it evidence. With the
    public key gone from beside the log (and none given), verify refuses to vouch for a cut
    rather than say OK with a note."""
    data, _, _ = crashed_after_checkpoint(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(data / "audit", copy)
    (copy / "audit-signing-key.pub.pem").unlink()
    done = subprocess.run([sys.executable, "-m", "ferrohsm", "audit", "verify", str(copy),
                           "--hmac-key-file", str(data / "audit-hmac.key")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no public key to check their signatures" in done.stderr


def test_a_cut_after_the_newest_checkpoint_is_not_seen_offline_but_at_start_up(
        tmp_path: Path) -> None:
    """The documented limit of the log alone: records written after the newest checkpoint (at
    most one interval's worth while records flow; here the interval is long) can be cut without
    trace for `audit verify`. The key store still holds the changes those records described,
    bound to their seqs, so the server refuses to start on that log."""
    data = tmp_path / "data"
    config = tmp_path / "slow.toml"
    config.write_text("[audit]\ncheckpoint_interval_seconds = 600\n")
    proc, exports = serve(data, config)
    create_keys(exports, 2)
    kill_9(proc)
    newest = max(c["seq"] for c in local_checkpoints(data))
    assert len(records(data)) > newest
    cut_log(data, newest)
    assert verify(data).returncode == 0
    assert "bound to audit records beyond the log's last seq" in refused(data, config)


# ---- the whole audit directory ---------------------------------------------------------------------

def test_whole_audit_dir_deleted_refuses_start_up(tmp_path: Path) -> None:
    data, config = tmp_path / "data", write_config(tmp_path)
    proc, exports = serve(data, config)
    create_keys(exports, 2)
    assert stop(proc) == 0
    shutil.rmtree(data / "audit")
    reason = refused(data, config)
    assert "audit log" in reason and "missing or empty" in reason
    assert "the key store holds 2 key(s)" in reason and "--accept-audit-loss" in reason
    assert not (data / "audit" / "audit-000001.jsonl").exists()  # no fresh chain was started
    proc, _ = serve(data, config, "--accept-audit-loss")
    assert stop(proc) == 0
    first = records(data)[:2]
    assert first[0]["action"] == "audit.genesis"
    assert first[1]["action"] == "integrity.audit_loss_accepted"
    assert "the key store holds 2 key(s)" in first[1]["message"]


# ---- a witness ------------------------------------------------------------------------------------------

def test_log_behind_a_witnessed_checkpoint(tmp_path: Path) -> None:
    data, witness = tmp_path / "data", tmp_path / "witness" / "checkpoints.jsonl"
    witness.parent.mkdir()
    config = write_config(tmp_path, witness=f"file:{witness}")
    proc, exports = serve(data, config)
    create_keys(exports, 4)
    assert stop(proc) == 0
    head = len(records(data))
    assert checkpoints(witness)[-1]["seq"] == head  # the close checkpoint reached the witness
    assert verify(data, "--witness", str(witness)).returncode == 0
    keep = head - 4  # a consistent rollback of the log AND its local checkpoints...
    cut_log(data, keep)
    kept = [line for line in (data / "audit" / "checkpoints.jsonl").read_bytes().splitlines()
            if json.loads(line)["seq"] <= keep]
    (data / "audit" / "checkpoints.jsonl").write_bytes(b"".join(x + b"\n" for x in kept))
    assert verify(data).returncode == 0  # ...is invisible without the witness,
    behind = verify(data, "--witness", str(witness))
    assert behind.returncode == 1 and ": truncated: " in behind.stdout  # but not with it
    assert "witnessed checkpoint" in behind.stdout
    reason = refused(data, config)
    assert f"ends at seq {keep}, behind the newest checkpoint in the witness" in reason


def test_a_lost_signing_key_is_said_as_such_and_no_new_one_is_left_behind(
        tmp_path: Path) -> None:
    data, config = tmp_path / "data", write_config(tmp_path)
    proc, exports = serve(data, config)
    create_keys(exports, 1)
    assert stop(proc) == 0
    key = data / "audit" / "audit-signing-key.pem"
    key.unlink()
    reason = refused(data, config)
    assert "the audit signing key" in reason and "is missing" in reason, reason
    assert "restore the key from a backup" in reason and "corrupt" not in reason
    assert not key.exists()  # no new key beside the old public half
    cps = data / "audit" / "checkpoints.jsonl"
    cps.rename(tmp_path / "old-checkpoints.jsonl")  # the way out the message gives
    proc, _ = serve(data, config, "--accept-audit-loss")
    assert stop(proc) == 0 and key.exists()


def test_without_a_witness_a_restart_warns_of_none(tmp_path: Path) -> None:
    data, config = tmp_path / "data", write_config(tmp_path)
    for _ in range(2):
        proc, _ = serve(data, config)
        assert stop(proc) == 0
    assert "holds no checkpoint" not in (tmp_path / "server.log").read_text()


def test_an_emptied_witness_is_warned_about_at_start_up(tmp_path: Path) -> None:
    """A witness disk not mounted at boot (an empty or missing file) would silently disable
    rollback detection: start-up says so, naming the seq the log had signed."""
    data, witness = tmp_path / "data", tmp_path / "witness" / "checkpoints.jsonl"
    witness.parent.mkdir()
    config = write_config(tmp_path, witness=f"file:{witness}")
    proc, exports = serve(data, config)
    create_keys(exports, 2)
    assert stop(proc) == 0
    log = tmp_path / "server.log"
    assert "holds no checkpoint" not in log.read_text()
    witness.write_bytes(b"")
    proc, _ = serve(data, config)
    assert stop(proc) == 0
    warned = [line for line in log.read_text().splitlines() if "holds no checkpoint" in line]
    assert len(warned) == 1 and str(witness) in warned[0] and "signed checkpoints up to seq" \
        in warned[0]


def test_time_checkpoint_appears_within_the_interval_while_records_flow(tmp_path: Path) -> None:
    data, config = tmp_path / "data", write_config(tmp_path)
    proc, exports = serve(data, config)
    try:
        opened = max(c["seq"] for c in local_checkpoints(data))
        create_keys(exports, 1)
        written = len(records(data))
        took = wait_for(lambda: max(c["seq"] for c in local_checkpoints(data)) >= written)
        assert took < INTERVAL + 1.5
        assert written > opened
        for _ in range(3):  # while records keep flowing, checkpoints keep coming
            create_keys(exports, 1)
            time.sleep(INTERVAL)
        assert len(local_checkpoints(data)) >= 4
    finally:
        assert stop(proc) == 0


# ---- store loss ------------------------------------------------------------------------------------------

def test_deleted_key_file_refuses_start_up_until_accepted(tmp_path: Path) -> None:
    data, config = tmp_path / "data", write_config(tmp_path)
    proc, exports = serve(data, config)
    lost, kept = create_keys(exports, 2)
    assert stop(proc) == 0
    (data / "keys" / f"{lost}.json").unlink()
    reason = refused(data, config)
    assert f"1 key(s) the audit log records as created are missing from the key store: {lost}" \
        in reason and kept not in reason and "--accept-store-loss" in reason
    proc, exports = serve(data, config, "--accept-store-loss")
    status, _ = call(exports, "GET", f"/v1/keys/{kept}")
    assert status == 200
    assert stop(proc) == 0
    log = records(data)
    assert [r["key_id"] for r in log if r["action"] == "key.lost"] == [lost]
    summary = [r for r in log if r["action"] == "integrity.store_loss_accepted"]
    assert len(summary) == 1 and lost in summary[0]["message"]
    assert summary[0]["details"]["count"] == 1
    proc, _ = serve(data, config)  # accepted once, recorded: the next start-up is clean
    assert stop(proc) == 0
    assert verify(data).returncode == 0
    report = subprocess.run([sys.executable, "-m", "ferrohsm", "audit", "report",
                             str(data / "audit"), "--json"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    shown = json.loads(report.stdout)["sensitive_events"]["rows"]
    assert {(r["action"], r["key_id"]) for r in shown} >= {("key.lost", lost),
                                                           ("integrity.store_loss_accepted", None)}


def test_deleted_store_refuses_start_up_and_writes_nothing(tmp_path: Path) -> None:
    data, config = tmp_path / "data", write_config(tmp_path)
    proc, exports = serve(data, config, "--key-store", "sqlite")
    ids = create_keys(exports, 3)
    assert stop(proc) == 0
    (data / "keys.sqlite3").unlink()
    reason = refused(data, config, "--key-store", "sqlite")
    assert "the key store is empty, but the audit log records the creation of 3 key(s)" in reason
    assert all(key_id in reason for key_id in ids)
    assert not (data / "keys.sqlite3").exists() or _no_check_value(data / "keys.sqlite3")


def _no_check_value(db: Path) -> bool:
    import sqlite3
    conn = sqlite3.connect(db)
    try:
        count: int = conn.execute("SELECT COUNT(*) FROM meta").fetchone()[0]
        return count == 0
    finally:
        conn.close()


# ---- the master-key check value ----------------------------------------------------------------------

def test_missing_check_value_with_keys_refuses_start_up(tmp_path: Path) -> None:
    data, config = tmp_path / "data", write_config(tmp_path)
    proc, exports = serve(data, config)
    check = data / "meta" / "master_key_check"
    assert check.is_file()  # written for the new, empty store
    create_keys(exports, 1)
    assert stop(proc) == 0
    check.unlink()
    reason = refused(data, config)
    assert "holds 1 key(s) but no master-key check value" in reason
    assert not check.exists()  # nothing claimed the store


def test_a_revocation_cut_after_a_crash_with_its_deny_list_entry_is_caught(
        tmp_path: Path) -> None:
    """Nothing stored is bound to a token revocation's record (a key record is bound to its
    change's), so a crash right after one left it in the unchecked tail: cut, with the
    deny-list emptied, the revoked token worked again, unseen even by a witness (an outside
    tester). The revocation's answer now waits for a checkpoint covering it, and its copy."""
    witness = tmp_path / "elsewhere" / "checkpoints.jsonl"
    witness.parent.mkdir()
    data = tmp_path / "data"
    config = write_config(tmp_path, witness=f"file:{witness}")
    config.write_text(config.read_text().replace(f"= {INTERVAL}", "= 3600"))  # no time ones
    proc, exports = serve(data, config)
    create_keys(exports, 2)
    status, body = call(exports, "POST", "/v1/tokens/revoke", {"jti": "stolen-ci-token"})
    assert status == 200, body
    revoke_seq = max(r["seq"] for r in records(data) if r["action"] == "token.revoke")
    assert max(c["seq"] for c in local_checkpoints(data)) >= revoke_seq  # before the answer
    assert max(c["seq"] for c in checkpoints(witness)) >= revoke_seq
    kill_9(proc)
    cut_log(data, revoke_seq - 1)  # the revocation and what followed it
    (data / "revoked-tokens.json").write_text('{"revoked":{},"version":1}')
    kept = [c for c in local_checkpoints(data) if c["seq"] < revoke_seq]  # a consistent cut
    (data / "audit" / "checkpoints.jsonl").write_text("".join(json.dumps(c) + "\n"
                                                              for c in kept))
    result = verify(data, "--witness", str(witness))
    assert result.returncode == 1 and ": truncated:" in result.stdout, result.stdout
    assert "the witness" in refused(data, config)
