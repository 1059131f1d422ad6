"""A record the server refuses to read is refused everywhere: not listed as current, not carried
by a backup (online or offline), so a restore cannot make it obeyed again.

An older copy of a record, put back in the SQLite store behind a running server's back, still
carries a good MAC (it was authentic once): a revoked key's copy says active, an executed
approval's copy says approved. Reading the key or the approval alone is refused (500
integrity_error). Before this, listings showed the copies as current, and a backup re-encoded
them under fresh MACs, so that a restore served the revoked key and ran the approval again (an
outside tester's finding). A record whose MAC fails was left out of a backup without a word.
"""

from __future__ import annotations

import base64
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from live import LiveServer

from ferrohsm.cli.main import main
from ferrohsm.config import Secrets

POLICY = """
[policy.tags.pci]
approvals_required = 1
approval_actions = ["rotate"]
approval_ttl_seconds = 3600
"""


def B(data: bytes) -> str:  # noqa: N802  a base64 literal in bodies
    return base64.b64encode(data).decode()


class Rows:
    """A SQLite data directory's rows, read and written behind the server's back."""

    def __init__(self, data: Path, table: str) -> None:
        self.path, self.table = data / f"{table}.sqlite3", table

    def _sql(self, statement: str, *args: Any) -> list[Any]:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            return conn.execute(statement, args).fetchall()
        finally:
            conn.close()

    def save(self, row_id: str) -> dict[str, Any]:
        conn = sqlite3.connect(self.path)
        conn.row_factory = sqlite3.Row
        try:
            row = conn.execute(f"SELECT * FROM {self.table} WHERE id = ?",  # noqa: S608
                               (row_id,)).fetchone()
        finally:
            conn.close()
        return dict(row)

    def put_back(self, saved: dict[str, Any]) -> None:
        columns = [name for name in saved if name != "id"]
        self._sql(f"UPDATE {self.table} SET "  # noqa: S608  the table's own column names
                  + ", ".join(f"{name} = ?" for name in columns) + " WHERE id = ?",
                  *(saved[name] for name in columns), saved["id"])


def create(srv: LiveServer, name: str, tags: list[str]) -> str:
    status, _, key = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                   "usage": "encrypt", "name": name,
                                                   "tags": tags})
    assert status == 201, key
    return str(key["id"])


def backup_refusals(srv: LiveServer) -> list[dict[str, Any]]:
    return [r for r in srv.audit_log() if r["action"] == "system.backup"]


def assert_backup_refused(srv: LiveServer, named: str, kind: str) -> None:
    """POST /v1/sys/backup refused (500 integrity_error), naming the one record and saying
    that no archive was made."""
    status, _, reply = srv.call("POST", "/v1/sys/backup")
    assert status == 500 and reply["error"]["code"] == "integrity_error", reply
    message = reply["error"]["message"]
    assert named in message and f"1 {kind} record(s)" in message, reply
    assert "nothing was written" in message, reply


def executed_approval(srv: LiveServer) -> tuple[str, dict[str, Any], Rows]:
    """A rotation approved and executed; the approval's row as it was when approved."""
    key_id = create(srv, "guarded", ["pci"])
    status, _, parked = srv.call("POST", f"/v1/keys/{key_id}/rotate",
                                 token=srv.token("operator", subject="op-1"))
    assert status == 202, parked
    approval = parked["approval"]["id"]
    status, _, voted = srv.call("POST", f"/v1/approvals/{approval}/approve",
                                token=srv.token("operator", subject="op-2"))
    assert status == 200, voted
    rows = Rows(srv.data_dir, "approvals")
    approved = rows.save(approval)
    status, _, done = srv.call("POST", f"/v1/keys/{key_id}/rotate",
                               token=srv.token("operator", subject="op-1"),
                               headers={"X-Approval-ID": approval})
    assert status == 200, done
    return approval, approved, rows


def test_a_revoked_key_put_back_active_is_unreadable_in_listings_and_stops_a_backup(
        tmp_path: Path) -> None:
    srv = LiveServer(tmp_path, key_store="sqlite", config_text=POLICY)
    try:
        victim = create(srv, "victim", ["pub"])
        other = create(srv, "other", ["pub"])
        rows = Rows(srv.data_dir, "keys")
        active = rows.save(victim)
        assert srv.call("POST", f"/v1/keys/{victim}/revoke")[0] == 200
        rows.put_back(active)
        status, _, reply = srv.call("GET", f"/v1/keys/{victim}")
        assert status == 500 and reply["error"]["code"] == "integrity_error", reply

        status, _, page = srv.call("GET", "/v1/keys")
        assert status == 200 and [k["id"] for k in page["keys"]] == [other], page
        assert page["unreadable"] == [victim], page
        scoped = srv.token("service", subject="svc", tags=["pub"])
        status, _, page = srv.call("GET", "/v1/keys?state=active", token=scoped)
        assert status == 200 and [k["id"] for k in page["keys"]] == [other], page
        status, _, listed = srv.call("LIST", "/v1/transit/keys", token=scoped)
        assert status == 200 and listed["data"]["keys"] == ["other"], listed

        assert_backup_refused(srv, victim, "key")
        assert [r["outcome"] for r in backup_refusals(srv)] == ["error"]
    finally:
        srv.close()


def test_a_key_whose_record_fails_its_mac_is_not_left_out_of_a_backup_silently(
        tmp_path: Path) -> None:
    srv = LiveServer(tmp_path, key_store="sqlite", config_text=POLICY)
    try:
        create(srv, "kept", [])
        edited = create(srv, "edited", [])
        rows = Rows(srv.data_dir, "keys")
        row = rows.save(edited)
        row["record"] = row["record"].replace('"description":', '"description":"x",'
                                              '"was":', 1)
        rows.put_back(row)
        assert_backup_refused(srv, edited, "key")
    finally:
        srv.close()


def test_an_executed_approval_put_back_approved_is_not_listed_nor_backed_up(
        tmp_path: Path) -> None:
    srv = LiveServer(tmp_path, key_store="sqlite", config_text=POLICY)
    try:
        approval, approved, rows = executed_approval(srv)
        rows.put_back(approved)
        status, _, reply = srv.call("GET", f"/v1/approvals/{approval}")
        assert status == 500 and reply["error"]["code"] == "integrity_error", reply
        status, _, page = srv.call("GET", "/v1/approvals")
        assert status == 200 and approval not in [a["id"] for a in page["approvals"]], page
        status, _, page = srv.call("GET", "/v1/approvals?state=approved")
        assert status == 200 and page["approvals"] == [], page
        assert_backup_refused(srv, approval, "approval")
    finally:
        srv.close()


def test_the_offline_backup_refuses_an_approval_the_log_shows_was_executed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    s = Secrets(secrets.token_bytes(32), secrets.token_bytes(32), secrets.token_bytes(32))
    srv = LiveServer(tmp_path, key_store="sqlite", config_text=POLICY, secrets_=s)
    try:
        approval, approved, rows = executed_approval(srv)
    finally:
        srv.close()
    rows.put_back(approved)
    for name, value in (("FERROHSM_MASTER_KEY", B(s.master_key)),
                        ("FERROHSM_JWT_HS256_SECRET", s.jwt_hs256_secret.hex()),
                        ("FERROHSM_AUDIT_HMAC_KEY", B(s.audit_hmac_key))):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FERROHSM_BACKUP_KEY", raising=False)
    out = tmp_path / "refused.fhsmbak"
    capsys.readouterr()
    code = main(["backup", "--offline", "--data-dir", str(srv.data_dir), "--key-store",
                 "sqlite", "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and approval in err and "backup refused" in err, err
    assert "Traceback" not in err and not out.exists()
    srv = LiveServer(tmp_path, key_store="sqlite", config_text=POLICY, secrets_=s)
    try:
        outcomes = [(r["outcome"], approval in r["message"]) for r in backup_refusals(srv)]
        assert outcomes == [("error", True)], outcomes
    finally:
        srv.close()
