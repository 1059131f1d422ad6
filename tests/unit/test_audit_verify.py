"""The offline verifier's command line (exit codes 0/1/2, output) and the audit report."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ferrohsm.audit import report
from ferrohsm.audit.chain import GENESIS_HASH, AuditEvent, seal_record_line
from ferrohsm.audit.checkpoint import signed_bytes
from ferrohsm.audit.verify import main, report_main, verify_paths

KEY = b"K" * 32
KEY_B64 = base64.b64encode(KEY).decode()
T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def make_lines(events: list[AuditEvent], start: int = 1, prev: str = GENESIS_HASH,
               key: bytes = KEY) -> list[bytes]:
    lines = []
    for offset, event in enumerate(events):
        record, line = seal_record_line(event, seq=start + offset, prev_hash=prev,
                                        ts=T0 + timedelta(minutes=offset),
                                        record_id=f"id-{start + offset}", hmac_key=key)
        prev = record["hash"]
        lines.append(line)
    return lines


def ev(n: int = 0, **kw: Any) -> AuditEvent:
    fields: dict[str, Any] = {"actor": "alice", "role": "operator", "action": "key.encrypt",
                              "outcome": "success", "message": f"event {n}"}
    fields.update(kw)
    return AuditEvent(**fields)


def write(path: Path, lines: list[bytes], end: bytes = b"\n") -> str:
    path.write_bytes(b"\n".join(lines) + end)
    return str(path)


@pytest.fixture
def log(tmp_path: Path) -> str:
    return write(tmp_path / "export.jsonl", make_lines([ev(n) for n in range(5)]))


@pytest.fixture(autouse=True)
def hmac_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERROHSM_AUDIT_HMAC_KEY", KEY_B64)


def test_ok_exit_0(log: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([log]) == 0
    out = capsys.readouterr().out
    head = verify_paths([log], KEY).head_hash
    assert out.splitlines()[0] == (f"OK (WARNING: checkpoints NOT checked): 5 records "
                                   f"verified, head seq 5 hash {head}")  # none beside it


def test_tampered_exit_1_names_the_record(log: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = Path(log).read_bytes().replace(b"event 2", b"event 9")
    Path(log).write_bytes(data)
    assert main([log]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL: record seq 3: modified: ")


def test_json_output(log: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([log, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["records_checked"] == 5 and result["problem"] is None


@pytest.mark.parametrize("argv", [[], ["--bogus"], ["/nonexistent/log"]])
def test_usage_errors_exit_2_with_one_line(argv: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("ferrohsm audit verify: error: ")


def test_missing_or_bad_key_exit_2(log: str, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FERROHSM_AUDIT_HMAC_KEY")
    assert main([log]) == 2
    assert "FERROHSM_AUDIT_HMAC_KEY" in capsys.readouterr().err
    monkeypatch.setenv("FERROHSM_AUDIT_HMAC_KEY", "not base64 of 32 bytes")
    assert main([log]) == 2
    err = capsys.readouterr().err
    assert "base64 of 32 bytes" in err and "not base64" not in err  # the value is never echoed


def test_key_file(log: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FERROHSM_AUDIT_HMAC_KEY")
    key_file = tmp_path / "hmac.key"
    key_file.write_text(KEY_B64 + "\n")
    key_file.chmod(0o600)
    assert main([log, "--hmac-key-file", str(key_file)]) == 0
    key_file.write_bytes(KEY)  # raw bytes work too
    assert main([log, "--hmac-key-file", str(key_file)]) == 0
    key_file.chmod(0o644)
    assert main([log, "--hmac-key-file", str(key_file)]) == 2
    assert "chmod 600" in capsys.readouterr().err


def test_wrong_key_exit_1(log: str, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FERROHSM_AUDIT_HMAC_KEY", base64.b64encode(b"x" * 32).decode())
    assert main([log]) == 1
    assert capsys.readouterr().out.startswith("FAIL: record seq 1: bad_hmac: ")


def test_checkpoint_and_public_key(tmp_path: Path, log: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    signer = Ed25519PrivateKey.generate()
    pem = signer.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "pub.pem").write_bytes(pem)
    head = verify_paths([log], KEY)
    cp: dict[str, Any] = {"v": 1, "type": "ferrohsm.audit.checkpoint", "log_id": None,
                          "seq": 5, "head_hash": head.head_hash, "ts": "2026-11-28T00:00:00Z"}
    cp["sig"] = base64.b64encode(signer.sign(signed_bytes(cp))).decode()
    (tmp_path / "cp.json").write_text(json.dumps(cp))
    args = [log, "--checkpoint", str(tmp_path / "cp.json"),
            "--public-key", str(tmp_path / "pub.pem")]
    assert main(args) == 0
    capsys.readouterr()
    write(Path(log), Path(log).read_bytes().splitlines()[:4])
    assert main(args) == 1
    assert capsys.readouterr().out.startswith("FAIL: record seq 5: truncated: ")
    (tmp_path / "cp.json").write_text(json.dumps(dict(cp, seq=4)))
    assert main(args) == 1
    assert "bad_checkpoint" in capsys.readouterr().out
    assert main([log, "--checkpoint", str(tmp_path / "pub.pem")]) == 1  # not a checkpoint
    assert "bad_checkpoint: line 1 of " in capsys.readouterr().out
    assert main([log, "--checkpoint", str(tmp_path / "nope.jsonl")]) == 2  # missing: usage


def signed_checkpoints(tmp_path: Path, log: str) -> tuple[Path, Path]:
    """A checkpoints.jsonl of the log's head (seq 3 and 5) and the public key, in tmp_path."""
    signer = Ed25519PrivateKey.generate()
    pem = signer.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "pub.pem").write_bytes(pem)
    lines = Path(log).read_bytes().splitlines()
    out = []
    for seq in (3, 5):
        cp: dict[str, Any] = {"v": 1, "type": "ferrohsm.audit.checkpoint", "log_id": None,
                              "seq": seq, "head_hash": json.loads(lines[seq - 1])["hash"],
                              "ts": "2026-11-28T00:00:00Z"}
        cp["sig"] = base64.b64encode(signer.sign(signed_bytes(cp))).decode()
        out.append(json.dumps(cp).encode())
    return Path(write(tmp_path / "cps.jsonl", out)), tmp_path / "pub.pem"


def test_explicit_empty_checkpoint_or_witness_file_fails(
        tmp_path: Path, log: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An explicitly given file holding no checkpoint fails like an emptied checkpoints.jsonl
    beside the log (it passed with "checkpoints NOT checked": an outside tester)."""
    cps, pub = signed_checkpoints(tmp_path, log)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    for flag in ("--checkpoint", "--witness"):
        assert main([log, flag, str(empty), "--public-key", str(pub)]) == 1
        out = capsys.readouterr().out
        assert out.startswith(f"FAIL: record seq 5: no_checkpoints: the {flag} file {empty} "
                              "holds no checkpoint"), out
    assert main([log, "--checkpoint", str(cps), "--witness", str(cps),
                 "--public-key", str(pub)]) == 0


def test_garbage_in_a_checkpoints_file_is_bad_checkpoint(
        tmp_path: Path, log: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A complete line that is not a checkpoint is tampering (exit 1), not a usage error; a torn
    last line (no newline: a crash while appending) is still left out."""
    cps, pub = signed_checkpoints(tmp_path, log)
    good = cps.read_bytes()
    for junk in (b"garbage\n", b'{"seq": 0}\n', b"[" * 100_000 + b"\n"):
        cps.write_bytes(good + junk)
        for flag in ("--checkpoint", "--witness"):
            assert main([log, flag, str(cps), "--public-key", str(pub)]) == 1
            out = capsys.readouterr().out
            assert out.startswith(f"FAIL: record seq 5: bad_checkpoint: line 3 of {cps} is not "
                                  "a checkpoint"), out
    cps.write_bytes(good + b'{"v":1,"seq"')  # torn tail
    assert main([log, "--checkpoint", str(cps), "--public-key", str(pub)]) == 0
    capsys.readouterr()
    beside = Path(log).parent / "checkpoints.jsonl"  # found beside the log, not given
    beside.write_bytes(good + b"garbage\n")
    assert main([log, "--public-key", str(pub)]) == 1
    assert f"bad_checkpoint: line 3 of {beside}" in capsys.readouterr().out


def test_torn_last_line(tmp_path: Path) -> None:
    lines = make_lines([ev(n) for n in range(3)])
    path = write(tmp_path / "log.jsonl", [*lines[:2], lines[2][:40]], end=b"")
    result = verify_paths([path], KEY)
    assert result.problem is not None and result.problem["kind"] == "torn_line"
    assert result.records_checked == 2
    # a whole record without its newline is torn too: the server writes both in one write,
    # acknowledges after fsync, and cuts such a line at its next start (an outside tester)
    whole = verify_paths([write(tmp_path / "nonl.jsonl", lines, end=b"")], KEY)
    assert whole.problem is not None and whole.problem["kind"] == "torn_line"
    assert (whole.records_checked, whole.problem["seq"]) == (2, 3)
    assert whole.problem["detail"].startswith("the last line of ")
    assert verify_paths([write(tmp_path / "ok.jsonl", lines)], KEY).ok


def test_non_canonical_export_still_verifies(tmp_path: Path) -> None:
    """An exporter that re-encoded records (spaces, other key order) loses speed, not validity."""
    records = [json.loads(x) for x in make_lines([ev(n) for n in range(3)])]
    pretty = [json.dumps(dict(reversed(list(r.items())))).encode() for r in records]
    assert verify_paths([write(tmp_path / "a.jsonl", pretty)], KEY).ok
    dup = pretty[1].replace(b'{"hmac"', b'{"message": "event 9", "hmac"', 1)
    result = verify_paths([write(tmp_path / "b.jsonl", [pretty[0], dup, pretty[2]])], KEY)
    assert result.problem is not None and result.problem["kind"] == "malformed"


def test_partial_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = make_lines([ev(n) for n in range(6)])
    path = write(tmp_path / "tail.jsonl", lines[3:])
    assert main([path]) == 1
    assert "FAIL: record seq 1: deleted:" in capsys.readouterr().out
    assert main([path, "--partial"]) == 0
    assert "starts at seq 4" in capsys.readouterr().out
    empty = write(tmp_path / "nothing-new.jsonl", [], end=b"")  # `export --after-seq N`: none
    assert main([empty, "--partial"]) == 0
    assert "nothing to check (--partial)" in capsys.readouterr().out
    assert main([empty]) == 1  # a whole log with no record is a deleted one


def test_segments_in_order_and_sqlite(tmp_path: Path) -> None:
    lines = make_lines([ev(n) for n in range(6)])
    a = write(tmp_path / "audit-000001.jsonl", lines[:3])
    b = write(tmp_path / "audit-000002.jsonl", lines[3:])
    assert verify_paths([a, b], KEY).ok
    assert verify_paths([str(tmp_path)], KEY).head_seq == 6
    swapped = verify_paths([b, a], KEY).problem
    assert swapped is not None and (swapped["kind"], swapped["seq"]) == ("reordered", 1)
    db_path = tmp_path / "audit.db"
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE audit_log (seq INTEGER PRIMARY KEY, record TEXT)")
    db.executemany("INSERT INTO audit_log VALUES (?, ?)",
                   [(i, x.decode()) for i, x in enumerate(lines, 1)])
    db.commit()
    db.close()
    assert verify_paths([str(db_path)], KEY).records_checked == 6
    db = sqlite3.connect(db_path)
    db.execute("UPDATE audit_log SET record = replace(record, 'event 2', 'event 9') WHERE seq = 3")
    db.commit()
    db.close()
    problem = verify_paths([str(db_path)], KEY).problem  # rows of a database, not lines
    assert problem is not None and problem["detail"].startswith(f"row 3 of {db_path}: ")


# ---- report ------------------------------------------------------------------------------------

def report_log(tmp_path: Path) -> str:
    events = [
        ev(1, actor="mallory", outcome="denied", action="key.destroy", source_ip="203.0.113.9"),
        ev(2, actor="mallory", outcome="denied", action="auth.token", source_ip="203.0.113.9"),
        ev(3, actor="x\x1b[2Jevil", outcome="denied", action="key.sign", source_ip="198.51.100.1"),
        ev(4, action="key.revoke", key_id="k1"),
        ev(5, action="approval.approve", actor="carol"),
        ev(6, action="key.rollback", actor="bob"),
    ]
    lines = make_lines(events)
    _, night = seal_record_line(ev(7, actor="night-owl"), seq=7,
                                prev_hash=json.loads(lines[-1])["hash"],
                                ts=datetime(2026, 11, 28, 2, 30, tzinfo=UTC), record_id="n",
                                hmac_key=KEY)
    return write(tmp_path / "r.jsonl", [*lines, night])


def test_report_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = report_log(tmp_path)
    assert report_main([path]) == 0
    out = capsys.readouterr().out
    assert "Audit report: 7 records" in out
    assert "mallory" in out and "203.0.113.9" in out
    assert "Destroy / revoke / rollback / purge / import / loss events: 3" in out
    assert "Approval events: 1" in out
    assert "Outside working hours (07:00-19:00 UTC): 1" in out and "night-owl" in out
    assert "\x1b" not in out and "\\x1b[2Jevil" in out  # terminal escapes are neutralised


def test_report_json_and_hours(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = report_log(tmp_path)
    assert report_main([path, "--json", "--work-hours", "00:00-12:00"]) == 0
    data = json.loads(capsys.readouterr().out)
    mallory = data["denials_by_actor"][0]
    assert mallory == {"name": "mallory", "denied": 1, "auth_failures": 1, "total": 2}
    assert data["denials_by_source_ip"][0]["name"] == "203.0.113.9"
    assert data["off_hours"]["count"] == 6  # everything at 12:00 and later is now off hours
    assert report_main([path, "--work-hours", "nonsense"]) == 2
    assert report_main(["/nonexistent"]) == 2
    night_shift = report.parse_hours("22:00-06:00")
    assert report.off_hours("2026-01-01T23:00:00.000000Z", night_shift) is False
    assert report.off_hours("2026-01-01T12:00:00.000000Z", night_shift) is True


def test_report_counts_denied_reads_of_the_audit_log(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """audit.read is a user's action: a token probing the log is a denial like any other; only
    the sink's own records (genesis, checkpoints, segment starts) are left out."""
    from ferrohsm.audit.report import build_report
    events = [ev(1, action="audit.genesis", actor="system"),
              *(ev(i, action="audit.read", outcome="denied", actor="snooper")
                for i in range(2, 7)),
              ev(7, action="audit.recovery", actor="system")]
    path = write(tmp_path / "r.jsonl", make_lines(events))
    data = build_report(report._records([path]))
    assert data["denials_by_actor"][0]["name"] == "snooper"
    assert data["denials_by_actor"][0]["denied"] == 5
    assert any(row["action"] == "audit.recovery" for row in data["sensitive_events"]["rows"])
    # the role beside the actor: a subject that looks like "system" reads as what it is
    assert all("role" in row for row in data["sensitive_events"]["rows"])
    assert "system" not in [row["name"] for row in data["denials_by_actor"]]


def test_report_counts_unreadable_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = make_lines([ev(1)])
    path = write(tmp_path / "x.jsonl", [lines[0], b"garbage"])
    assert report_main([path]) == 0
    assert "Unreadable lines: 1" in capsys.readouterr().out


def test_report_of_no_valid_record_has_no_time_span(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from ferrohsm.audit.report import build_report, render
    out = render(build_report([None, None]))
    assert out.splitlines()[0] == "Audit report: 0 records" and "None" not in out
    assert "Unreadable lines: 2" in out
    # a file with lines but no readable record is not an audit log: not a clean exit 0
    path = write(tmp_path / "junk.jsonl", [b"garbage", b"{not json"])
    assert report_main([path]) == 2
    captured = capsys.readouterr()
    assert not captured.out and "no readable audit record" in captured.err


def test_report_lists_the_intents_no_record_settled() -> None:
    """A node killed between a change and its settling record leaves an intent that only a
    cold start settles; a cluster never entirely down keeps it (an acceptance tester found 9 in
    9,184). The report names them, so an auditor knows to ask the store."""
    from ferrohsm.audit.report import build_report, render

    def rec(seq: int, outcome: str, **details: object) -> dict[str, object]:
        return {"seq": seq, "ts": "2026-12-06T10:00:00Z", "actor": "op", "action": "key.rotate",
                "outcome": outcome, "key_id": f"k{seq}", "details": details}
    data = build_report([rec(1, "intent"), rec(2, "success", intent_seq=1), rec(3, "intent"),
                         rec(4, "intent"), rec(5, "rolled_back", intent_seq=4)])
    assert data["unsettled_intents"]["count"] == 1
    assert data["unsettled_intents"]["rows"][0]["key_id"] == "k3"
    assert "never settled" in render(data)


def test_report_lists_key_changes_made_to_an_older_copy_put_back() -> None:
    """k's changes 1 (create) and 3 (revoke, from 1); change 5 built on 1 again: the record of
    before the revocation put back and changed. A store.bound change accepts what came before."""
    from ferrohsm.audit.report import build_report, render

    def rec(seq: int, action: str, outcome: str, **details: object) -> dict[str, object]:
        return {"seq": seq, "ts": "2026-12-06T10:00:00Z", "actor": "op", "action": action,
                "outcome": outcome, "key_id": "k", "details": details}
    records = [rec(1, "key.create", "intent", from_seq=0), rec(2, "key.create", "success",
                                                              intent_seq=1),
               rec(3, "key.revoke", "intent", from_seq=1), rec(4, "key.revoke", "success",
                                                               intent_seq=3),
               rec(5, "key.update", "intent", from_seq=1), rec(6, "key.update", "success",
                                                               intent_seq=5)]
    data = build_report(records)
    assert data["forked_changes"]["count"] == 1
    assert data["forked_changes"]["rows"][0]["seq"] == 6
    assert data["forked_changes"]["rows"][0]["from_seq"] == 1
    assert "older copy" in render(data)
    accepted = [*records, rec(7, "store.bound", "intent", from_seq=5),
                rec(8, "store.bound", "success", intent_seq=7),
                rec(9, "key.update", "intent", from_seq=7),
                rec(10, "key.update", "success", intent_seq=9)]
    assert build_report(accepted)["forked_changes"]["count"] == 1  # nothing new after it
    assert build_report(records[:4])["forked_changes"]["count"] == 0
    # two writers recorded their successes the other way round: no fork (a red team's run)
    crossed = [rec(1, "key.update", "intent", from_seq=0), rec(2, "key.update", "intent",
                                                               from_seq=1),
               rec(3, "key.update", "success", intent_seq=2),
               rec(4, "key.update", "success", intent_seq=1)]
    assert build_report(crossed)["forked_changes"]["count"] == 0
    twice = [{"seq": n, "ts": "2026-12-06T10:00:00Z", "actor": "op", "outcome": "success",
              "action": "approval.executed", "details": {"approval_id": "a1"}} for n in (1, 2)]
    data = build_report(twice)
    assert data["approvals_executed_twice"] == ["a1"] and "more than once" in render(data)
    assert build_report(twice[:1])["approvals_executed_twice"] == []


def test_verify_never_imports_cryptography() -> None:
    """Not even for checkpoints (tests/test_architecture.py checks the whole import closure and
    tests/integration/test_offline_verify_stdlib.py runs it with cryptography blocked)."""
    import ast
    source = Path(__file__).resolve().parents[2] / "ferrohsm" / "audit"
    for name in ("verify.py", "offline.py", "report.py", "chain.py", "segments.py",
                 "checkpoint.py", "ed25519.py"):
        tree = ast.parse((source / name).read_text())
        top = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        modules = [getattr(n, "module", None) or n.names[0].name for n in top]
        assert not any(m and m.startswith("cryptography") for m in modules), name
    assert os.path.exists(source / "verify.py")


# ---- lines nested too deeply for the JSON parser -------------------------------------------------

DEEP = b"[" * 100_000


def test_deeply_nested_line_is_malformed_not_a_crash(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """json.loads raises RecursionError on such a line: it is a malformed record like any other
    unparsable line (found by an outside tester: "unexpected RecursionError", nothing named)."""
    lines = make_lines([ev(n) for n in range(3)])
    path = write(tmp_path / "deep.jsonl", [lines[0], DEEP, *lines[1:]])
    assert main([path, "--no-checkpoints"]) == 1
    assert capsys.readouterr().out.startswith(
        f"FAIL: record seq 2: malformed: line 2 of {path} is not an audit record")
    assert report_main([path]) == 0
    assert "Unreadable lines: 1" in capsys.readouterr().out
    alone = write(tmp_path / "alone.jsonl", [DEEP])
    assert report_main([alone]) == 2 and "no readable audit record" in capsys.readouterr().err


def test_deep_checkpoint_line_and_stored_records() -> None:
    from ferrohsm.audit.sinkbase import stored_record
    from ferrohsm.domain.errors import AuditUnavailable
    from ferrohsm.domain.strictjson import loads
    with pytest.raises(ValueError, match="nested too deeply"):
        loads(DEEP)
    assert loads(b"[1]") == [1]
    with pytest.raises(AuditUnavailable, match="fails its integrity check"):
        stored_record(DEEP, "audit-000001.jsonl")


def test_another_logs_checkpoints_are_bad_checkpoint(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Another log's checkpoints, signed with that log's own key (given too), are not a sign of
    this log being rewritten: bad_checkpoint, another log id (the README's table); they were
    reported as truncated by an outside tester."""
    genesis = ev(0, actor="system", role="system", action="audit.genesis",
                 details={"log_id": "log-A"})
    log = write(tmp_path / "a.jsonl", make_lines([genesis, ev(1), ev(2)]))
    other = make_lines([dict_event(genesis, "log-B"), ev(1)], key=b"O" * 32)
    signer = Ed25519PrivateKey.generate()
    (tmp_path / "b.pem").write_bytes(signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    cp: dict[str, Any] = {"v": 1, "type": "ferrohsm.audit.checkpoint", "log_id": "log-B",
                          "seq": 1, "head_hash": json.loads(other[0])["hash"],
                          "ts": "2026-11-28T00:00:00Z"}
    cp["sig"] = base64.b64encode(signer.sign(signed_bytes(cp))).decode()
    (tmp_path / "b.jsonl").write_text(json.dumps(cp) + "\n")
    assert main([log, "--checkpoint", str(tmp_path / "b.jsonl"),
                 "--public-key", str(tmp_path / "b.pem")]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL: record seq 1: bad_checkpoint: the checkpoint belongs to another "
                          "log (log id 'log-B', this log's is 'log-A')"), out
    mine = Ed25519PrivateKey.generate()  # the log's own key: the signature names another key
    (tmp_path / "a.pem").write_bytes(mine.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    cp["key_fingerprint"] = "f" * 64
    cp["sig"] = base64.b64encode(signer.sign(signed_bytes(cp))).decode()
    (tmp_path / "b.jsonl").write_text(json.dumps(cp) + "\n")
    assert main([log, "--checkpoint", str(tmp_path / "b.jsonl"),
                 "--public-key", str(tmp_path / "a.pem")]) == 1
    assert "it names another key (fingerprint ffff" in capsys.readouterr().out


def dict_event(event: AuditEvent, log_id: str) -> AuditEvent:
    from dataclasses import replace
    return replace(event, details={"log_id": log_id})


def test_report_limit_empty_input_and_unverified_line(tmp_path: Path, log: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """--limit below 1 is a usage error; an empty input is refused as verify fails it (it said
    "0 records", exit 0); the text says the records were not verified (an outside tester)."""
    for bad in ("-1", "0", "x"):
        assert report_main([log, "--limit", bad]) == 2
        assert "--limit" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert report_main([str(empty)]) == 2
    assert "holds no audit records at all" in capsys.readouterr().err
    assert main([str(empty), "--no-checkpoints"]) == 1
    assert "holds no audit records at all" in capsys.readouterr().out
    assert report_main([log, "--limit", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("Records NOT verified") and "`ferrohsm audit verify`" in out[1]


def test_the_checkpoints_file_given_as_a_log_is_named_not_read_as_records(tmp_path: Path) -> None:
    """`audit report DIR/*.jsonl` caught checkpoints.jsonl too and counted its lines as
    records with no outcome: both tools now say what the file is."""
    from ferrohsm.audit.offline import VerifyInputError, expand_paths
    (tmp_path / "checkpoints.jsonl").write_text("{}\n")
    (tmp_path / "audit.jsonl").write_text("")
    with pytest.raises(VerifyInputError, match="signed checkpoints, not its records"):
        expand_paths([str(tmp_path / "audit.jsonl"), str(tmp_path / "checkpoints.jsonl")])


def test_report_blames_nobody_for_the_servers_own_authentication_outage() -> None:
    """A 503 while checking a token (its revocation list unreachable) is recorded "error": not
    the token holder's failure, so neither a denial nor an authentication failure of theirs."""
    records = [{"seq": n, "ts": "2026-11-28T12:00:00.000000Z", "actor": "svc",
                "action": "auth.authenticate", "outcome": "error", "source_ip": "10.0.0.5"}
               for n in range(1, 7)]
    records.append({"seq": 7, "ts": "2026-11-28T12:00:00.000000Z", "actor": "mallory",
                    "action": "auth.authenticate", "outcome": "denied", "source_ip": "10.0.0.6"})
    data = report.build_report(records)
    assert [row["name"] for row in data["denials_by_actor"]] == ["mallory"]
    assert [row["name"] for row in data["denials_by_source_ip"]] == ["10.0.0.6"]
    assert data["outcomes"] == {"error": 6, "denied": 1}


def test_an_audit_folder_this_user_may_not_read_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`audit report DIR` / `audit verify DIR` of a folder the user may not list died with
    "unexpected PermissionError"; one below a folder it may not enter was "no such file or
    directory" (os.path.exists says False on EACCES). Both are now the cause, in one line.
    (The tests run as root, whom permissions do not stop: the refusals are made here.)"""
    import os

    from ferrohsm.audit.offline import VerifyInputError, expand_paths
    listed, hidden = tmp_path / "listed", tmp_path / "closed" / "audit"
    listed.mkdir()
    real_stat = os.stat

    def refuse_list(path: str) -> list[str]:
        raise PermissionError(13, "Permission denied", path)

    def refuse_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path) == str(hidden):
            raise PermissionError(13, "Permission denied", path)
        return real_stat(path, *args, **kwargs)
    monkeypatch.setattr(os, "listdir", refuse_list)  # as segments.py calls it
    with pytest.raises(VerifyInputError, match=f"cannot read {listed}: Permission denied"):
        expand_paths([str(listed)])
    monkeypatch.setattr(os, "stat", refuse_stat)
    with pytest.raises(VerifyInputError, match=f"cannot read {hidden}: Permission denied"):
        expand_paths([str(hidden)])


def test_report_lists_the_policys_destructions_and_imports(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    """A person's key.destroy was listed; the scheduler's scheduling of a destruction
    (max_key_age_days) and an import of outside material as a key's version were not."""
    path = write(tmp_path / "r.jsonl", make_lines([
        ev(1, action="scheduler.max_age", actor="scheduler", key_id="k1"),
        ev(2, action="key.import", key_id="k2"), ev(3)]))
    assert report_main([path, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["sensitive_events"]
    assert rows["count"] == 2
