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


def test_envelope_streams_segments_and_sees_a_file_cut_at_a_segment(live: LiveServer,
                                                                     tmp_path: Path) -> None:
    """Files of several segments round-trip (an empty one too); one cut after a whole segment,
    or with two segments swapped, is refused: each segment's number and a last-segment flag
    are bound to it."""
    live.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt",
                                   "name": "envelope-stream"})
    segment = (1 << 20) + 16  # 1 MiB of data and its tag
    for size in (0, 1 << 20, (5 << 19) + 7):
        source = tmp_path / f"f{size}.bin"
        data = os.urandom(size)
        source.write_bytes(data)
        assert run(live, "encrypt", "--key", "envelope-stream", str(source),
                   cwd=tmp_path).returncode == 0
        out = tmp_path / f"f{size}.out"
        done = run(live, "decrypt", "--key", "envelope-stream", f"{source}.enc", "--key-file",
                   f"{source}.key", "--out", str(out), cwd=tmp_path)
        assert done.returncode == 0 and out.read_bytes() == data, done.stderr
    sealed = (tmp_path / f"f{(5 << 19) + 7}.bin.enc").read_bytes()
    head, body = sealed[:16], sealed[16:]
    for name, forged in (("cut", head + body[:segment]),
                         ("swapped", head + body[segment:2 * segment] + body[:segment]
                          + body[2 * segment:])):
        bad = tmp_path / f"{name}.enc"
        bad.write_bytes(forged)
        refused = run(live, "decrypt", "--key", "envelope-stream", str(bad), "--key-file",
                      str(tmp_path / f"f{(5 << 19) + 7}.bin.key"), "--out",
                      str(tmp_path / f"{name}.out"), cwd=tmp_path)
        assert refused.returncode == 1 and "cut short" in refused.stderr, refused.stderr
        assert not (tmp_path / f"{name}.out").exists()
