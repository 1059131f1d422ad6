"""An auditor's machine without ``cryptography``: ``ferrohsm audit verify`` still checks everything.

A real FileSink writes a log with signed checkpoints (the server's Ed25519 key, through
``cryptography``); then ``python3 -m ferrohsm audit verify`` runs in a subprocess whose import
system refuses ``cryptography`` and ``jwt`` (the only third-party runtime dependencies). It must
verify the log against the signed checkpoint, and name a tampered checkpoint signature.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ferrohsm.audit.chain import AuditEvent
from ferrohsm.audit.filesink import FileSink

ROOT = Path(__file__).resolve().parents[2]
HMAC_KEY = b"H" * 32
BLOCKED = ("cryptography", "jwt")

# Runs a module (argv[1]) as __main__ with BLOCKED unimportable; reports what tried to import them.
WRAPPER = f"""
import runpy, sys

class Blocker:
    attempts = []

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {BLOCKED!r}:
            self.attempts.append(name)
            raise ImportError(name + " is blocked in this test")
        return None

sys.meta_path.insert(0, Blocker())
module, sys.argv = sys.argv[1], [sys.argv[1]] + sys.argv[2:]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    print("blocked imports:", Blocker.attempts, file=sys.stderr)
    print("ferrohsm loaded from:", sys.modules["ferrohsm"].__file__, file=sys.stderr)
"""


def run_blocked(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FERROHSM_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", WRAPPER, module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real file sink's directory: records, checkpoints.jsonl and the signing key pair."""
    directory = tmp_path_factory.mktemp("audit")
    sink = FileSink(directory, HMAC_KEY, anchor_every=4, durable=False)
    try:
        for n in range(10):
            sink.append(AuditEvent(actor=f"svc-{n}", role="service", action="key.encrypt",
                                   outcome="success", message=f"encrypt {n}"))
        sink.make_checkpoint()
    finally:
        sink.close()
    return directory


@pytest.fixture(scope="module")
def key_file(audit_dir: Path) -> Path:
    path = audit_dir.parent / "hmac.key"
    path.write_bytes(base64.b64encode(HMAC_KEY))
    path.chmod(0o600)
    return path


def verify_args(audit_dir: Path, key_file: Path, checkpoint: Path) -> list[str]:
    return ["audit", "verify", str(audit_dir), "--hmac-key-file", str(key_file),
            "--checkpoint", str(checkpoint),
            "--public-key", str(audit_dir / "audit-signing-key.pub.pem"), "--json"]


def newest_checkpoint(audit_dir: Path) -> dict[str, Any]:
    lines = (audit_dir / "checkpoints.jsonl").read_bytes().splitlines()
    assert len(lines) >= 3  # every 4 records, on demand, and at close
    value: dict[str, Any] = json.loads(lines[-1])
    return value


def test_the_blocker_really_blocks(tmp_path: Path) -> None:
    result = run_blocked("ferrohsm.crypto.signing", cwd=tmp_path)
    assert result.returncode != 0
    assert "cryptography is blocked in this test" in result.stderr


def test_verifies_signed_checkpoints_without_cryptography(audit_dir: Path, key_file: Path,
                                                         tmp_path: Path) -> None:
    result = run_blocked("ferrohsm", *verify_args(audit_dir, key_file,
                                                  audit_dir / "checkpoints.jsonl"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "blocked imports: []" in result.stderr
    assert f"ferrohsm loaded from: {ROOT / 'ferrohsm'}" in result.stderr
    report = json.loads(result.stdout)
    checkpoint = newest_checkpoint(audit_dir)
    assert report["ok"] and report["problem"] is None
    assert report["head_seq"] == checkpoint["seq"] and report["head_hash"] == checkpoint["head_hash"]
    assert not any("NOT checked" in notice for notice in report["notices"])


def flip_signature(checkpoint: dict[str, Any]) -> dict[str, Any]:
    signature = bytearray(base64.b64decode(checkpoint["sig"]))
    signature[5] ^= 0x10
    return dict(checkpoint, sig=base64.b64encode(bytes(signature)).decode())


@pytest.mark.parametrize("tamper", [flip_signature, lambda cp: dict(cp, seq=cp["seq"] - 1)],
                         ids=["signature-bit", "signed-field"])
def test_a_tampered_checkpoint_is_named(audit_dir: Path, key_file: Path, tmp_path: Path,
                                        tamper: Any) -> None:
    checkpoint = newest_checkpoint(audit_dir)
    forged = tmp_path / "checkpoint.json"
    forged.write_text(json.dumps(tamper(checkpoint)))
    result = run_blocked("ferrohsm", *verify_args(audit_dir, key_file, forged), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "blocked imports: []" in result.stderr
    problem = json.loads(result.stdout)["problem"]
    assert problem["kind"] == "bad_checkpoint"
    assert "signature does not verify" in problem["detail"]
