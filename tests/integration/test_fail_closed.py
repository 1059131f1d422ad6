"""Fail closed: when the audit log cannot take a record, the request is refused (503) and
nothing it would have changed is changed. And sealed-material tampering in a store file fails
that key only, with a clear error and never wrong output."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from live import LiveServer


def B(data: bytes) -> str:  # noqa: N802  one letter, like b"": a base64 literal in bodies
    return base64.b64encode(data).decode()


def break_audit(srv: LiveServer) -> None:
    """Replace the live segment underneath the server, as a careless operator or an attacker
    might: the sink notices (inode check) and refuses every further record."""
    segments = sorted((srv.data_dir / "audit").glob("audit-*.jsonl"))
    live = segments[-1]
    copy = live.read_bytes()
    live.unlink()
    live.write_bytes(copy)


def test_mutations_refused_and_unchanged_when_audit_fails(tmp_path: Path) -> None:
    srv = LiveServer(tmp_path, key_store="filesystem")
    try:
        _, _, key = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt",
                                                  "name": "steady"})
        before = srv.call("GET", "/v1/keys/steady")[2]
        break_audit(srv)
        status, _, err = srv.call("POST", "/v1/keys/steady/rotate")
        assert status == 503 and err["error"]["code"] == "unavailable"
        assert srv.call("POST", "/v1/keys/steady/revoke", {"reason": "x"})[0] == 503
        assert srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt",
                                             "name": "ghost"})[0] == 503
        assert srv.call("POST", f"/v1/keys/{key['id']}/encrypt", {"plaintext": B(b"x")},
                        role="service")[0] == 503
        from ferrohsm.domain.model import key_view
        after = key_view(srv.rt.store.get(key["id"]))
        # recorded first: nothing was written, so nothing was undone (the revision is the same)
        assert after == before and after["primary_version"] == 1 and after["state"] == "active"
        with pytest.raises(Exception):
            srv.rt.store.get_by_name("ghost")
        health = srv.call("GET", "/healthz", role=None)
        assert health[0] == 503 and health[2]["status"] == "degraded"
    finally:
        srv.close()


@contextlib.contextmanager
def full_disk(srv: LiveServer) -> Iterator[None]:
    """RLIMIT_FSIZE (`ulimit -f`) stands in for a full disk: writes that grow the live audit
    segment past its current size fail (EFBIG) until the block ends."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    live = sorted((srv.data_dir / "audit").glob("audit-*.jsonl"))[-1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (live.stat().st_size + 10, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_full_disk_refuses_with_503_and_changes_nothing(tmp_path: Path) -> None:
    srv = LiveServer(tmp_path, key_store="memory")
    try:
        key = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt"})[2]
        with full_disk(srv):
            status, _, err = srv.call("POST", f"/v1/keys/{key['id']}/rotate")
        assert status == 503, err
        assert srv.rt.store.get(key["id"]).primary_version == 1
    finally:
        srv.close()


def test_tampered_sealed_material_fails_that_key_only(tmp_path: Path) -> None:
    srv = LiveServer(tmp_path, key_store="filesystem")
    try:
        victim = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt"})[2]
        other = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt"})[2]
        ct = srv.call("POST", f"/v1/keys/{victim['id']}/encrypt", {"plaintext": B(b"p")},
                      role="service")[2]
        path = next((srv.data_dir / "keys").rglob(f"{victim['id']}*"))
        record = json.loads(path.read_text())
        sealed = bytearray(base64.b64decode(record["versions"][0]["sealed"]))
        sealed[20] ^= 0x01
        record["versions"][0]["sealed"] = base64.b64encode(bytes(sealed)).decode()
        path.write_text(json.dumps(record))
        os.utime(path, ns=(1, 1))  # a different mtime, as any real rewrite would have
        status, _, err = srv.call("POST", f"/v1/keys/{victim['id']}/decrypt",
                                  {"ciphertext": ct["ciphertext"]}, role="service")
        assert status == 500 and err["error"]["code"] == "integrity_error"
        assert "integrity" in err["error"]["message"] and "sealed" in err["error"]["message"]
        assert srv.call("POST", f"/v1/keys/{other['id']}/encrypt", {"plaintext": B(b"p")},
                        role="service")[0] == 200
    finally:
        srv.close()


def test_encrypt_refused_when_its_batched_audit_commit_fails(tmp_path: Path) -> None:
    """Encrypt runs on the event loop with its record deferred to the turn's group commit: when
    that commit fails (full disk), the ciphertext is never sent, and the next one works."""
    srv = LiveServer(tmp_path, key_store="memory")
    try:
        key = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt"})[2]
        with full_disk(srv):
            status, _, err = srv.call("POST", f"/v1/keys/{key['id']}/encrypt",
                                      {"plaintext": B(b"secret")}, role="service")
        assert status == 503 and "ciphertext" not in err, err
        status, _, out = srv.call("POST", f"/v1/keys/{key['id']}/encrypt",
                                  {"plaintext": B(b"secret")}, role="service")
        assert status == 200 and out["ciphertext"].startswith("fhsm:v1:")
        records = [json.loads(line) for seg in sorted((srv.data_dir / "audit").glob("*.jsonl"))
                   for line in seg.read_text().splitlines()]
        encrypts = [r for r in records if r["action"] == "crypto.encrypt"]
        assert [r["outcome"] for r in encrypts] == ["success"]  # the refused one left no trace
    finally:
        srv.close()
