"""A served key's AES-GCM count is claimed in its record, audited, and survives a restart
(engine/gcmbudget.py): a real server over TLS on SQLite, batches on the event loop (whose
reservations run on the reserving thread), then the same data directory served again, whose
start-up checks accept every reservation as a confirmed change of the key."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

from live import LiveServer

ITEMS = 10_000
SETTINGS = {("crypto", "max_batch_items"): ITEMS, ("rate_limit", "burst"): 100_000}


def reserved_count(srv: LiveServer, key_id: str) -> int:
    status, _, key = srv.call("GET", f"/v1/keys/{key_id}")
    assert status == 200, key
    return int(key["versions"][0]["encryptions_reserved"])


def audit_records(srv: LiveServer, action: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        _, _, page = srv.call("GET", f"/v1/audit?after_seq={after}&limit=1000", role="auditor")
        found += [r for r in page["records"] if r["action"] == action]
        if page["next_after_seq"] is None:
            return found
        after = page["next_after_seq"]


def test_the_count_is_reserved_in_the_record_and_outlives_the_process(tmp_path: Path) -> None:
    srv = LiveServer(tmp_path, key_store="sqlite", overrides=SETTINGS)
    try:
        status, _, key = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                       "usage": "encrypt"})
        assert status == 201 and key["versions"][0]["encryptions_reserved"] == 0
        item = {"plaintext": base64.b64encode(b"m").decode()}
        for _ in range(4):  # 40,000: past the first half of a process's grace (32,768)
            status, _, reply = srv.call("POST", f"/v1/keys/{key['id']}/encrypt",
                                        {"batch": [item] * ITEMS}, role="service")
            assert status == 200 and len(reply["results"]) == ITEMS
            assert all("ciphertext" in r for r in reply["results"])
        deadline = time.monotonic() + 20
        while reserved_count(srv, key["id"]) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        claimed = reserved_count(srv, key["id"])
        # what was used when the reserving thread began (the 32,768th asked), and a block
        assert claimed >= 32_768 + 65_536
        records = audit_records(srv, "key.reserve_encryptions")
        assert [r["outcome"] for r in records] == ["intent", "success"]
        assert records[1]["actor"] == "system"
        assert records[1]["details"]["encryptions_reserved_total"] == claimed
        secrets_ = srv.secrets
    finally:
        srv.close()
    again = LiveServer(tmp_path, key_store="sqlite", overrides=SETTINGS, secrets_=secrets_)
    try:
        assert reserved_count(again, key["id"]) == claimed
        status, _, out = again.call("POST", f"/v1/keys/{key['id']}/encrypt",
                                    {"plaintext": item["plaintext"]}, role="service")
        assert status == 200, out
        assert reserved_count(again, key["id"]) == claimed  # within the new process's grace
    finally:
        again.close()
