"""A served key's AES-GCM count is claimed in its record, audited, and survives a restart
(engine/gcmbudget.py): a real server over TLS on SQLite, batches on the event loop (whose
reservations run on the reserving thread), then the same data directory served again, whose
start-up checks accept every reservation as a confirmed change of the key."""

from __future__ import annotations

import base64
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from live import LiveServer

from ferrohsm.config import Secrets
from ferrohsm.engine.gcmbudget import Limits

ITEMS = 10_000
SETTINGS = {("crypto", "max_batch_items"): ITEMS, ("rate_limit", "burst"): 100_000}


def reserved_count(srv: LiveServer, key_id: str) -> int:
    status, _, key = srv.call("GET", f"/v1/keys/{key_id}")
    assert status == 200, key
    return int(key["versions"][0]["encryptions_reserved"])


def audit_records(srv: LiveServer, action: str) -> list[dict[str, Any]]:
    return [r for r in srv.audit_log() if r["action"] == action]


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
        kept = srv.secrets
    finally:
        srv.close()
    again = LiveServer(tmp_path, key_store="sqlite", overrides=SETTINGS, secrets_=kept)
    try:
        assert reserved_count(again, key["id"]) == claimed
        status, _, out = again.call("POST", f"/v1/keys/{key['id']}/encrypt",
                                    {"plaintext": item["plaintext"]}, role="service")
        assert status == 200, out
        assert reserved_count(again, key["id"]) == claimed  # within the new process's grace
    finally:
        again.close()


def test_reservations_wait_for_an_online_rekey_and_every_key_stays_usable(
        tmp_path: Path) -> None:
    """A renewal queued while a master-key rekey starts: the reserving thread holds the rekey's
    pause as requests do, so the rekey waits for the renewal it runs, and the ones queued run
    after it, on records under the new key (a red team found renewals written during the rekey
    with material sealed under the old key: those keys were lost)."""
    master = secrets.token_bytes(32)
    key_file = tmp_path / "master.key"
    key_file.write_text(base64.b64encode(master).decode() + "\n")
    key_file.chmod(0o600)
    config = f'[secrets]\nmaster_key_file = "{key_file}"\n'
    keys_ = Secrets(master, secrets.token_bytes(32), secrets.token_bytes(32))
    srv = LiveServer(tmp_path, key_store="sqlite", config_text=config, secrets_=keys_)
    try:
        budget = srv.rt.service.engine.budget
        budget.limits = Limits(grace=8, first_block=4, max_block=16)
        real, gate, inside = budget.reserver, threading.Event(), threading.Event()
        assert real is not None

        def held(key_id: str, version: int, wanted: int) -> tuple[int, int]:
            inside.set()
            gate.wait(20)
            return real(key_id, version, wanted)
        budget.reserver = held
        ids = [srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                             "usage": "encrypt"})[2]["id"] for _ in range(6)]
        item = {"plaintext": base64.b64encode(b"m").decode()}
        for key_id in ids:  # the 4th encryption of each asks the reserving thread for a block
            for _ in range(4):
                assert srv.call("POST", f"/v1/keys/{key_id}/encrypt", item,
                                role="service")[0] == 200
        assert inside.wait(10)  # the first renewal holds the pause, the others are queued
        answer: list[Any] = []
        rekey = threading.Thread(target=lambda: answer.append(
            srv.call("POST", "/v1/sys/rekey", {"reason": "rotate under load"})))
        rekey.start()
        rekey.join(1.0)
        assert rekey.is_alive()  # draining: it waits for the renewal in flight
        gate.set()
        rekey.join(60)
        assert answer and answer[0][0] == 200, answer
        deadline = time.monotonic() + 20
        while min(reserved_count(srv, k) for k in ids) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert min(reserved_count(srv, k) for k in ids) > 0
        for key_id in ids:
            status, _, out = srv.call("POST", f"/v1/keys/{key_id}/encrypt", item, role="service")
            assert status == 200, out
    finally:
        srv.close()
    new_master = base64.b64decode(key_file.read_text())
    assert new_master != master
    again = LiveServer(tmp_path, key_store="sqlite", config_text=config,
                       secrets_=Secrets(new_master, keys_.jwt_hs256_secret, keys_.audit_hmac_key))
    try:
        for key_id in ids:
            status, _, out = again.call("POST", f"/v1/keys/{key_id}/encrypt", item,
                                        role="service")
            assert status == 200, out
    finally:
        again.close()


def test_sealing_stops_the_reserving_thread_and_lets_the_master_key_go(tmp_path: Path) -> None:
    """Sealing a split-knowledge server drops its runtime (cli/custody.py close_runtime): the
    reserving thread, which holds the service and so the sealer, must stop with it (a red team
    found the sealer, engine and thread alive after each seal)."""
    import gc
    import weakref

    from ferrohsm import app as wiring
    from ferrohsm.cli.custody import close_runtime
    from ferrohsm.config import load_config
    from ferrohsm.domain.model import Principal, RequestContext, Role
    config = load_config(None, env={}, overrides={
        ("storage", "key_store"): "sqlite", ("storage", "data_dir"): str(tmp_path / "data")})
    rt = wiring.build_runtime(config, Secrets(*(secrets.token_bytes(32) for _ in range(3))))
    rt.service.engine.budget.limits = Limits(grace=8, first_block=4, max_block=16)
    admin = RequestContext(Principal("alice", Role.ADMINISTRATOR), request_id="r")
    loop = RequestContext(Principal("svc", Role.SERVICE), request_id="s", tickets=[])
    key = rt.service.create_key(admin, algorithm="aes-256-gcm", usage="encrypt")
    for _ in range(4):  # the 4th asks the reserving thread for a block
        rt.service.encrypt(loop._replace(tickets=[]), key.id, b"m")
    engine = weakref.ref(rt.service.engine)  # it holds the sealer (which takes no weakref)
    close_runtime(rt)
    assert not [t for t in threading.enumerate() if t.name == "ferrohsm-gcm-reserver"]
    # its node lock goes too (the next unseal starts cold: checks, leader, settling)
    assert not list((tmp_path / "data" / "nodes").glob("*.lock"))
    del rt
    gc.collect()
    assert engine() is None
