"""examples/python/envelope.py against a live server over TLS: a file encrypted locally under a
data key, the wrapped data key stored beside it, decrypted later through the server, also after
a rotation; tampering and a wrong context fail cleanly."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from live import LiveServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/python/envelope.py"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("envelope"))
    yield server
    server.close()


def run(live: LiveServer, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FERROHSM_URL": f"https://127.0.0.1:{live.port}",
           "FERROHSM_CA_CERT": str(live.pki.ca_cert),
           "FERROHSM_TOKEN": live.token("service", subject="envelope-app")}
    return subprocess.run([sys.executable, str(EXAMPLE), *argv], capture_output=True,
                          text=True, timeout=60, env=env, cwd=cwd, check=False)


def test_envelope_round_trip_rotation_and_tampering(live: LiveServer, tmp_path: Path) -> None:
    status, _, key = live.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                    "usage": "encrypt", "name": "envelope-kek"})
    assert status == 201, key
    secret = os.urandom(300_000) + b"the quarterly numbers"
    source = tmp_path / "report.bin"
    source.write_bytes(secret)
    made = run(live, "encrypt", "--key", "envelope-kek", "--context", "tenant-7", str(source),
               cwd=tmp_path)
    assert made.returncode == 0, made.stdout + made.stderr
    sealed, wrapped = tmp_path / "report.bin.enc", tmp_path / "report.bin.key"
    assert wrapped.read_text().startswith("fhsm:v1:")
    assert b"the quarterly numbers" not in sealed.read_bytes()
    # later: the server gives the data key back, the file is opened locally
    source.unlink()
    live.call("POST", "/v1/keys/envelope-kek/rotate", {})  # old envelopes stay readable
    opened = run(live, "decrypt", "--key", "envelope-kek", "--context", "tenant-7",
                 str(sealed), cwd=tmp_path)
    assert opened.returncode == 0, opened.stdout + opened.stderr
    assert source.read_bytes() == secret
    assert stat.S_IMODE(source.stat().st_mode) == 0o600
    # the wrong context: the server refuses the wrapped key (one line, no traceback)
    wrong = run(live, "decrypt", "--key", "envelope-kek", "--context", "tenant-8",
                str(sealed), "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert wrong.returncode == 1 and "bad_request" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    # a flipped byte in the file: refused locally
    data = bytearray(sealed.read_bytes())
    data[-1] ^= 1
    sealed.write_bytes(bytes(data))
    tampered = run(live, "decrypt", "--key", "envelope-kek", "--context", "tenant-7",
                   str(sealed), "--out", str(tmp_path / "y"), cwd=tmp_path)
    assert tampered.returncode == 1 and "was altered" in tampered.stderr
    assert not (tmp_path / "y").exists()
    # the audit log has the data key and the decryption, never the data key itself
    _, _, page = live.call("GET", "/v1/audit?limit=1000", role="auditor")
    mine = [r for r in page["records"] if r["actor"] == "envelope-app"]
    assert any("data key" in r["message"] for r in mine)
    assert any(r["action"] == "crypto.decrypt" and r["outcome"] == "success" for r in mine)
