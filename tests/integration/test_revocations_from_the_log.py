"""Revoked tokens are state that decides access: the deny-list file is a cache of what the audit
log records. A revocation is recorded (durable) before it is listed, and every start-up puts back
on the list what the log holds and the file lost: a deny-list emptied or deleted while the server
was down re-admits no revoked token."""

from __future__ import annotations

import json
from pathlib import Path

from live import LiveServer

from ferrohsm.auth.authn import issue_token


def test_an_emptied_or_deleted_deny_list_is_rebuilt_from_the_audit_log(tmp_path: Path) -> None:
    first = LiveServer(tmp_path, key_store="filesystem")
    secrets = first.secrets
    stolen = issue_token(secrets.jwt_hs256_secret, subject="stolen", role="service",
                         jti="jti-stolen-1")
    try:
        assert first.call("GET", "/v1/whoami", token=stolen)[0] == 200
        status, _, answer = first.call("POST", "/v1/tokens/revoke", {"jti": "jti-stolen-1"})
        assert status == 200, answer
        assert first.call("GET", "/v1/whoami", token=stolen)[0] == 401
        [record] = [r for r in first.rt.audit.read(0, 10000) if r["action"] == "token.revoke"]
        assert record["details"]["jti"] == "jti-stolen-1" and record["details"]["until"] > 0
    finally:
        first.close()
    deny = first.data_dir / "revoked-tokens.json"
    assert "jti-stolen-1" in json.loads(deny.read_text())["revoked"]
    for tamper in (lambda: deny.write_text('{"revoked":{},"version":1}'), deny.unlink):
        tamper()
        again = LiveServer(tmp_path, key_store="filesystem", secrets_=secrets)
        try:
            assert again.call("GET", "/v1/whoami", token=stolen)[0] == 401
            assert "jti-stolen-1" in json.loads(deny.read_text())["revoked"]
        finally:
            again.close()


def test_a_restore_writes_the_file_once_however_many_it_puts_back(tmp_path: Path) -> None:
    """The restore runs before other processes may serve, so it must be quick: one write of
    the deny-list, not one per entry (each a temp file, an fsync and a rename)."""
    from ferrohsm.auth.denylist import DenyList
    deny = DenyList(tmp_path / "revoked-tokens.json")
    writes: list[int] = []
    original = deny._write

    def counted(entries: dict[str, float]) -> None:
        writes.append(len(entries))
        original(entries)
    deny._write = counted  # type: ignore[method-assign]
    deny.revoke_all({f"jti-{i}": 4_000_000_000.0 for i in range(2000)}, 1_000.0)
    assert writes == [2000] and len(deny) == 2000
    assert deny.is_revoked("jti-1999", 1_000.0)
