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


def run(zipapp: Path, *args: str, home: Path,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "SHIV_ROOT": str(home / "shiv"), **(extra_env or {})}
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


def test_zipapp_carries_the_postgres_driver(zipapp: Path, tmp_path: Path) -> None:
    """psycopg travels inside the zip (pure Python over the host's libpq, see build.py): cut off
    from every site-packages, the zip app still loads it and libpq answers (connection refused
    on a closed port), where a missing driver would be a configuration error naming it."""
    args = ("quickstart", "--key-store", "postgres", "--data-dir", str(tmp_path / "d"),
            "--listen", "127.0.0.1:0")
    unset = run(zipapp, *args, home=tmp_path)
    assert unset.returncode == 2 and "FERROHSM_POSTGRES_DSN" in unset.stderr, unset.stderr
    refused = run(zipapp, *args, home=tmp_path,
                  extra_env={"FERROHSM_POSTGRES_DSN": "postgresql://hsm:pw-x9@127.0.0.1:1/keys"})
    assert refused.returncode == 1, refused.stderr
    assert "cannot connect to PostgreSQL at hsm@127.0.0.1:1/keys" in refused.stderr
    assert "psycopg" not in refused.stderr and "pw-x9" not in refused.stderr
