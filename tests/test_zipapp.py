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


def test_zipapp_init_prints_shares_that_reconstruct_the_checked_key(zipapp: Path,
                                                                     tmp_path: Path) -> None:
    """`ferrohsm init` from the one-file build: any 2 of the 3 shares it prints open the check
    value it kept, and nothing else it wrote holds a share."""
    import base64
    import itertools
    import re
    import secrets

    from ferrohsm.crypto import shamir
    from ferrohsm.custody import state
    from ferrohsm.custody.shares import parse_share
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "SHIV_ROOT": str(tmp_path / "shiv"),
           "FERROHSM_JWT_HS256_SECRET": secrets.token_urlsafe(40),
           "FERROHSM_AUDIT_HMAC_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    out = subprocess.run([sys.executable, "-I", str(zipapp), "init", "--data-dir",
                          str(tmp_path / "data"), "--shares", "3", "--threshold", "2"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    shares = [parse_share(s) for s in re.findall(r"fhsm1-\S+", out.stdout)]
    assert len(shares) == 3
    custody = state.load(tmp_path / "data")
    for pair in itertools.combinations(shares, 2):
        assert custody.current.opens_with(shamir.combine([(s.x, s.y) for s in pair]))
    written = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert not any(s.text().encode() in written for s in shares)
