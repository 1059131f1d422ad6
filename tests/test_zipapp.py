"""Build dist/ferrohsm with build.py and run it isolated (python3 -I), as a bare host would."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def zipapp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "ferrohsm"
    subprocess.run([sys.executable, str(ROOT / "build.py"), "--out", str(out)], check=True,
                   cwd=ROOT, capture_output=True, timeout=600)
    return out


def run(zipapp: Path, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "SHIV_ROOT": str(home / "shiv")}
    return subprocess.run([sys.executable, "-I", str(zipapp), *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=home)


def test_version_and_help(zipapp: Path, tmp_path: Path) -> None:
    from ferrohsm import __version__
    result = run(zipapp, "--version", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ferrohsm {__version__}"
    help_text = run(zipapp, "--help", home=tmp_path)
    assert help_text.returncode == 0
    for command in ("serve", "quickstart", "token", "audit"):
        assert command in help_text.stdout


def test_second_run_is_fast(zipapp: Path, tmp_path: Path) -> None:
    run(zipapp, "--version", home=tmp_path)  # first run extracts
    start = time.perf_counter()
    assert run(zipapp, "--version", home=tmp_path).returncode == 0
    assert time.perf_counter() - start < 5  # the bench holds the real (< 1 s) figure


def test_usage_error_exits_2_without_traceback(zipapp: Path, tmp_path: Path) -> None:
    result = run(zipapp, "no-such-command", home=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_build_is_reproducible(zipapp: Path, tmp_path: Path) -> None:
    again = tmp_path / "ferrohsm"
    subprocess.run([sys.executable, str(ROOT / "build.py"), "--out", str(again)], check=True,
                   cwd=ROOT, capture_output=True, timeout=600)
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(
        zipapp.read_bytes()).digest()


def test_zipapp_verifies_an_exported_audit_log_offline(zipapp: Path, tmp_path: Path) -> None:
    import base64
    import secrets

    from ferrohsm.audit.chain import AuditEvent, record_line
    from ferrohsm.audit.sinks import FileSink
    key = secrets.token_bytes(32)
    sink = FileSink(tmp_path / "audit", key, durable=False)
    for n in range(50):
        sink.append(AuditEvent(actor="alice", role="operator", action="key.rotate",
                               outcome="success", message=f"rotation {n}"))
    records = sink.read(0, 1000)
    sink.close()
    export = tmp_path / "export.jsonl"
    export.write_bytes(b"".join(record_line(r) + b"\n" for r in records))
    key_file = tmp_path / "hmac.key"
    key_file.write_text(base64.b64encode(key).decode())
    key_file.chmod(0o600)
    ok = run(zipapp, "audit", "verify", str(export), "--hmac-key-file", str(key_file),
             home=tmp_path)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    lines = export.read_bytes().splitlines(keepends=True)
    export.write_bytes(b"".join(lines[:10] + lines[11:]))  # delete one record
    bad = run(zipapp, "audit", "verify", str(export), "--hmac-key-file", str(key_file),
              home=tmp_path)
    assert bad.returncode == 1 and "FAIL" in bad.stdout and "deleted" in bad.stdout, bad.stdout


def test_zipapp_checks_signed_votes_offline(zipapp: Path, tmp_path: Path) -> None:
    """``audit verify-votes`` in the one-file build: a signed vote checks, a forged one fails."""
    import base64
    import json

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ferrohsm.domain.votes import fingerprint, vote_message
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM,
                              serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "approvers.toml").write_text(f'[approvers]\nalice = """\n{pem}"""\n')
    approval_id, request_hash = "0193c1d2-0000-7000-8000-000000000001", "ab" * 32
    message = vote_message(approval_id, request_hash, True)

    def record(signature: bytes) -> str:
        return json.dumps({"seq": 7, "actor": "alice", "action": "approval.approved",
                           "outcome": "success", "details": {
                               "approval_id": approval_id, "request_hash": request_hash,
                               "vote_signature": base64.b64encode(signature).decode(),
                               "vote_key_fingerprint": fingerprint(der),
                               "vote_message": message.decode()}}) + "\n"
    good, forged = tmp_path / "good.jsonl", tmp_path / "forged.jsonl"
    good.write_text(record(key.sign(message)))
    forged.write_text(record(Ed25519PrivateKey.generate().sign(message)))
    keys = str(tmp_path / "approvers.toml")
    ok = run(zipapp, "audit", "verify-votes", str(good), "--approver-keys", keys, home=tmp_path)
    assert ok.returncode == 0 and ": ok" in ok.stdout, ok.stdout + ok.stderr
    bad = run(zipapp, "audit", "verify-votes", str(forged), "--approver-keys", keys,
              home=tmp_path)
    assert bad.returncode == 1 and "bad_signature" in bad.stdout, bad.stdout + bad.stderr


def test_the_manual_page_and_completion_ship_in_the_build(zipapp: Path, tmp_path: Path) -> None:
    """`dist/ferrohsm man` and `dist/ferrohsm completion bash` work from the one file alone."""
    page = run(zipapp, "man", home=tmp_path)
    assert page.returncode == 0, page.stderr
    assert page.stdout.startswith(".TH FERROHSM 1 ") and '.SS "ferrohsm keys create"' in \
        page.stdout.replace("\\-", "-")
    script = run(zipapp, "completion", "bash", home=tmp_path)
    assert script.returncode == 0 and "complete -o bashdefault -o default -F _ferrohsm ferrohsm" \
        in script.stdout
