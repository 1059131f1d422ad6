"""The online master-key rekey (``POST /v1/sys/rekey``, ``ferrohsm rekey --online``) against a
live server, through REST and the CLI (README, "Split-knowledge unsealing and rekey"): an
Administrator rekeys while the server serves (Operators may not), under dual control when
``[approvals].rekey_approvals_required`` is set (parked 202, approved by another approver,
redeemed exactly once), old ciphertexts still decrypt and old signatures verify, the new key is
in ``[secrets].master_key_file`` and a restart with the old key is refused. A real SIGKILL of the
server at several points of the rekey leaves every record readable under the old or the new key,
and the next start finishes it."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from custodykit import Home, Server
from test_custody import (
    MESSAGES,
    actions,
    create_and_encrypt,
    decrypts,
    readable_under_old_or_new,
)

from ferrohsm.auth.authn import issue_token

pytestmark = pytest.mark.slow
MESSAGE = base64.b64encode(b"release 1.0").decode()


def online_home(tmp_path: Path, store: str = "filesystem", quorum: int = 0,
                extra: str = "") -> Home:
    """Environment mode with the master key in a 0600 [secrets].master_key_file."""
    home = Home(tmp_path, store=store, shamir=False)
    key_file = tmp_path / "master.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (home.master + "\n").encode())
    os.close(fd)
    text = home.config.read_text().replace("[secrets]\n",
                                           f'[secrets]\nmaster_key_file = "{key_file}"\n')
    home.config.write_text(text + f"[approvals]\nrekey_approvals_required = {quorum}\n"
                           + extra)
    return home


def env(home: Home, **extra: str) -> dict[str, str]:
    """The server's or CLI's environment without FERROHSM_MASTER_KEY (the file has it)."""
    out = home.env(**extra)
    if "FERROHSM_MASTER_KEY" not in extra:
        out.pop("FERROHSM_MASTER_KEY", None)
    return out


def key_in_file(home: Home) -> bytes:
    path = home.root / "master.key"
    assert path.stat().st_mode & 0o777 == 0o600
    return base64.b64decode(path.read_text())


def sign(srv: Server, home: Home) -> str:
    admin, service = home.token(), home.token("service")
    assert srv.call("POST", "/v1/keys", {"name": "signer", "algorithm": "ec-p256",
                                         "usage": "sign"}, admin)[0] == 201
    status, sig = srv.call("POST", "/v1/keys/signer/sign", {"message": MESSAGE}, service)
    assert status == 200, sig
    return str(sig["signature"])


def verifies(srv: Server, home: Home, signature: str) -> bool:
    status, out = srv.call("POST", "/v1/keys/signer/verify",
                           {"message": MESSAGE, "signature": signature}, home.token("service"))
    assert status == 200, out
    return bool(out["valid"])


def cli_rekey(home: Home, srv: Server, token: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return home.cli("rekey", "--online", "--server", srv.url, *extra,
                    env=env(home, FERROHSM_TOKEN=token))


def test_an_administrator_rekeys_a_serving_server(tmp_path: Path) -> None:
    home = online_home(tmp_path)
    old = key_in_file(home)
    srv = home.serve(env(home))
    try:
        items = create_and_encrypt(srv, home)
        signature = sign(srv, home)
        status, body = srv.call("POST", "/v1/sys/rekey", {}, home.token("operator"))
        assert status == 403, body
        # no approval is configured: an X-Approval-ID is refused, not recorded as authorising it
        status, body = srv.call("POST", "/v1/sys/rekey", {}, home.token(),
                                {"X-Approval-ID": "0190a2b3-c4d5-7e6f-8a9b-0c1d2e3f4a5b"})
        assert status == 409 and "needs no approval" in body["error"]["message"], body
        assert key_in_file(home) == old
        out = cli_rekey(home, srv, home.token())
        assert out.returncode == 0, out.stderr
        assert "rekey done" in out.stdout and str(home.root / "master.key") in out.stdout
        new = key_in_file(home)
        assert new != old and not (home.root / "master.key.rekey-new").exists()
        assert home.master not in out.stdout + out.stderr
        # the same process, the new key: old ciphertexts, old signatures, new operations
        decrypts(srv, home, items)
        assert verifies(srv, home, signature)
        assert srv.call("POST", "/v1/keys/k0/encrypt", {"plaintext": MESSAGE},
                        home.token("service"))[0] == 200
        status, body = srv.call("POST", "/v1/sys/rekey", {"reason": "again"}, home.token())
        assert status == 200 and body["rekeyed"] is True and body["rewritten"] == 7, body
        newer = key_in_file(home)
        decrypts(srv, home, items)
        archive = home.root / "after-rekey.fhsmbak"  # the same process: its key is the new one
        taken = home.cli("backup", "--out", str(archive), "--server", srv.url,
                         env=env(home, FERROHSM_TOKEN=home.token()))
        assert taken.returncode == 0, taken.stderr
    finally:
        srv.stop()
    restored = home.cli("restore", str(archive), "--data-dir", str(home.root / "restored"),
                        "--key-store", "sqlite", env=env(home, FERROHSM_MASTER_KEY=base64.b64encode(
                            newer).decode()))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert readable_under_old_or_new(home, newer, newer) == len(MESSAGES) + 1
    srv = home.serve(env(home))  # a restart with the new key in the file
    try:
        decrypts(srv, home, items)
        assert verifies(srv, home, signature)
    finally:
        srv.stop()
    for key in (old, new):  # the old keys are refused at start
        refused = home.cli("serve", "--config", str(home.config), timeout=60,
                           env=env(home, FERROHSM_MASTER_KEY=base64.b64encode(key).decode()))
        assert refused.returncode != 0 and "master key" in refused.stderr, refused.stderr
    # with the key in FERROHSM_MASTER_KEY the server cannot replace it: 409, nothing changed
    srv = home.serve(env(home, FERROHSM_MASTER_KEY=base64.b64encode(newer).decode()))
    try:
        status, body = srv.call("POST", "/v1/sys/rekey", None, home.token())
        assert status == 409 and "ferrohsm rekey" in body["error"]["message"], body
        decrypts(srv, home, items)
    finally:
        srv.stop()
    assert key_in_file(home) == newer
    done = actions(home)
    for expected in [("system.rekey", "denied"), ("custody.rekey_started", "success"),
                     ("key.rekey", "intent"), ("key.rekey", "success"),
                     ("custody.rekey_progress", "success"), ("custody.rekey_done", "success"),
                     ("system.rekey", "success"), ("system.rekey", "error")]:
        assert expected in done, expected
    written = home.root.joinpath("server.log").read_text() + str(home.audit_records())
    for key in (old, new, newer):
        assert base64.b64encode(key).decode() not in written
    verify = home.cli("audit", "verify", str(home.data / "audit"))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def approval_call(srv: Server, token: str, body: Any, approval: str | None = None
                  ) -> tuple[int, Any]:
    headers = {"X-Approval-ID": approval} if approval else {}
    return srv.call("POST", "/v1/sys/rekey", body, token, headers)


def test_rekey_under_dual_control_is_parked_approved_and_redeemed_once(tmp_path: Path) -> None:
    home = online_home(tmp_path, store="sqlite", quorum=1)
    old = key_in_file(home)
    admin = home.token()
    other_admin = issue_token(home.jwt.encode(), subject="second-admin", role="administrator",
                              ttl=600)
    srv = home.serve(env(home))
    try:
        items = create_and_encrypt(srv, home)
        status, parked = approval_call(srv, admin, {"reason": "yearly rotation"})
        assert status == 202, parked
        approval = parked["approval"]
        assert (approval["key_id"], approval["action"], approval["state"]) == (
            "system", "system.rekey", "pending")
        assert "yearly rotation" in approval["summary"]
        ident = approval["id"]
        assert approval_call(srv, admin, {"reason": "yearly rotation"})[1]["approval"]["id"] \
            == ident  # the same request again: the same approval
        assert key_in_file(home) == old
        status, listed = srv.call("GET", "/v1/approvals?state=pending", token=admin)
        assert [a["id"] for a in listed["approvals"]] == [ident]
        status, body = srv.call("POST", f"/v1/approvals/{ident}/approve", {}, admin)
        assert status == 403 and "own request" in body["error"]["message"]
        # still pending: redeeming now is another 202
        assert approval_call(srv, admin, {"reason": "yearly rotation"}, ident)[0] == 202
        status, voted = srv.call("POST", f"/v1/approvals/{ident}/approve",
                                 {"comment": "ok"}, home.token("operator"))
        assert status == 200 and voted["state"] == "approved", voted
        # only the requester, only this request
        assert approval_call(srv, other_admin, {"reason": "yearly rotation"}, ident)[0] == 403
        assert approval_call(srv, admin, {"reason": "something else"}, ident)[0] == 403
        out = cli_rekey(home, srv, admin, "--reason", "yearly rotation", "--approval-id", ident)
        assert out.returncode == 0, out.stderr
        assert key_in_file(home) != old
        again = cli_rekey(home, srv, admin, "--reason", "yearly rotation", "--approval-id",
                          ident)
        assert again.returncode == 1 and "executed" in again.stderr, again.stderr
        status, shown = srv.call("GET", f"/v1/approvals/{ident}", token=admin)
        assert shown["state"] == "executed"
        for name, _, _ in items:  # rewritten records take further changes (revision in step)
            status, body = srv.call("POST", f"/v1/keys/{name}/rotate", {}, home.token())
            assert status == 200, body
        # a CLI request without approval is parked and says how to go on
        parked_cli = cli_rekey(home, srv, admin)
        assert parked_cli.returncode == 1 and "--approval-id" in parked_cli.stderr
        decrypts(srv, home, items)
    finally:
        srv.stop()
    srv = home.serve(env(home))  # reconciliation accepts approvals of the "system" target
    try:
        decrypts(srv, home, items)
    finally:
        srv.stop()
    done = actions(home)
    for expected in [("approval.requested", "success"), ("approval.approved", "success"),
                     ("approval.executed", "success"), ("system.rekey", "success")]:
        assert expected in done, expected


KILL_POINTS = ("record:2", "committed", "installed")


def test_a_server_killed_during_an_online_rekey_finishes_it_at_the_next_start(
        tmp_path: Path) -> None:
    home = online_home(tmp_path)
    srv = home.serve(env(home))
    items = create_and_encrypt(srv, home)
    srv.stop()
    for point in KILL_POINTS:
        old = key_in_file(home)
        srv = home.serve(env(home, FERROHSM_REKEY_KILL_AT=point))
        with pytest.raises((http.client.HTTPException, OSError)):
            srv.call("POST", "/v1/sys/rekey", None, home.token())
        assert srv.proc.wait(30) == -9
        side = home.root / "master.key.rekey-new"
        new = base64.b64decode(side.read_text()) if side.exists() else key_in_file(home)
        assert new != old
        assert readable_under_old_or_new(home, old, new) == len(MESSAGES)
        srv = home.serve(env(home))  # resumes with whichever key the file holds
        try:
            decrypts(srv, home, items)
        finally:
            srv.stop()
        assert key_in_file(home) == new and not side.exists()
        assert readable_under_old_or_new(home, new, new) == len(MESSAGES)
    # killed again, and this time finished by the offline rekey into the sidecar: the next
    # start installs the sidecar's key, which the store's check value now names
    old = key_in_file(home)
    srv = home.serve(env(home, FERROHSM_REKEY_KILL_AT="record:1"))
    with pytest.raises((http.client.HTTPException, OSError)):
        srv.call("POST", "/v1/sys/rekey", None, home.token())
    assert srv.proc.wait(30) == -9
    side = home.root / "master.key.rekey-new"
    offline = home.cli("rekey", "--config", str(home.config), "--new-master-key-file",
                       str(side), env=env(home))
    assert offline.returncode == 0, offline.stderr
    assert key_in_file(home) == old
    srv = home.serve(env(home))
    try:
        decrypts(srv, home, items)
    finally:
        srv.stop()
    assert key_in_file(home) != old and not side.exists()
    done = actions(home)
    assert ("custody.rekey_resumed", "success") in done
    assert ("custody.rekey_done", "success") in done
    verify = home.cli("audit", "verify", str(home.data / "audit"))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_sidecar_cut_before_it_held_a_key_does_not_stop_the_next_start(
        tmp_path: Path) -> None:
    """A kill between creating and writing the new key's file (as an older version could
    leave it) is a start like any other: that key was never used, so its file is ignored
    and replaced by the next rekey, which writes it whole or not at all."""
    home = online_home(tmp_path)
    srv = home.serve(env(home))
    items = create_and_encrypt(srv, home)
    srv.stop()
    side = home.root / "master.key.rekey-new"
    side.write_bytes(b"")
    side.chmod(0o600)
    srv = home.serve(env(home))
    try:
        decrypts(srv, home, items)
        status, body = srv.call("POST", "/v1/sys/rekey", None, home.token())
        assert status == 200 and body["rekeyed"], body
        decrypts(srv, home, items)
    finally:
        srv.stop()
    assert not side.exists() and not (home.root / "master.key.rekey-new.partial").exists()


RETRY = "503 rekey_in_progress"


def answer(reply: tuple[int, Any]) -> int | str:
    status, body = reply
    if status == 503 and body["error"]["code"] == "rekey_in_progress":
        return RETRY
    return status if status in (200, 201) else f"{status} {body}"


def test_requests_during_an_online_rekey_wait_and_never_see_two_keys(tmp_path: Path) -> None:
    """Decrypts, encrypts and key creations run in threads through the whole rekey, and the
    scheduler rotates keys every tick: each request answers 200/201 (it waited for the swap, or
    ran before or after it), none fails, and every version of every key opens afterwards. The
    one other answer allowed is a rare 503 rekey_in_progress: a request already dispatched to
    the event loop when the pause began is told to retry rather than stall the loop."""
    home = online_home(tmp_path, store="sqlite", extra="[scheduler]\ninterval_seconds = 1\n"
                       "[policy.tags.fast]\nrotation_days = 0.000002\n")
    srv = home.serve(env(home))
    try:
        items = create_and_encrypt(srv, home)
        for i in range(4):
            assert srv.call("POST", "/v1/keys", {"name": f"fast{i}", "tags": ["fast"],
                                                 "algorithm": "aes-256-gcm",
                                                 "usage": "encrypt"}, home.token())[0] == 201
        service, admin = home.token("service"), home.token()
        statuses: list[int | str] = []
        stop = threading.Event()

        def traffic(n: int) -> None:
            i = 0
            while not stop.is_set():
                name, message, ciphertext = items[(n + i) % len(items)]
                status, out = srv.call("POST", f"/v1/keys/{name}/decrypt",
                                       {"ciphertext": ciphertext}, service)
                right = status == 200 and base64.b64decode(out["plaintext"]) == message
                statuses.append(status if right else "wrong plaintext" if status == 200
                                else answer((status, out)))
                statuses.append(answer(srv.call("POST", f"/v1/keys/{name}/encrypt",
                                                {"plaintext": MESSAGE}, service)))
                statuses.append(answer(srv.call("POST", "/v1/keys", {
                    "name": f"t{n}-{i}", "algorithm": "aes-256-gcm", "usage": "encrypt"},
                    admin)))
                i += 1
        threads = [threading.Thread(target=traffic, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.2)
            for _ in range(2):
                status, body = srv.call("POST", "/v1/sys/rekey", None, admin)
                assert status == 200, body
                time.sleep(1.2)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert statuses and set(statuses) <= {200, 201, RETRY}, sorted(map(str, statuses))
        assert statuses.count(RETRY) <= 3
        decrypts(srv, home, items)
        status, fast = srv.call("GET", "/v1/keys/fast0", token=admin)
        assert len(fast["versions"]) >= 3, fast  # the scheduler rotated it all along
        new = key_in_file(home)
    finally:
        srv.stop()
    assert readable_under_old_or_new(home, new, new) > len(MESSAGES)
    srv = home.serve(env(home))
    try:
        decrypts(srv, home, items)
    finally:
        srv.stop()


def test_imports_and_their_jobs_survive_online_rekeys(tmp_path: Path) -> None:
    """Import jobs made before a rekey are re-sealed with the keys, and imports made after it
    are sealed under the new key: the import service kept its own copy of the old sealer, so
    an imported key was lost at once, and the next rekey stopped halfway on it (the server
    then never started again)."""
    from ferrohsm.crypto.importwrap import RSA_OAEP_SHA256, wrap_for_import
    home = online_home(tmp_path)
    srv = home.serve(env(home))
    operator, service = home.token("operator"), home.token("service")

    def job() -> dict[str, Any]:
        status, made = srv.call("POST", "/v1/import-jobs", {}, operator)
        assert status in (200, 201), made
        return dict(made)

    def imported(made: dict[str, Any], name: str) -> bytes:
        material = os.urandom(32)
        wrapped = wrap_for_import(made["public_key"], RSA_OAEP_SHA256, material)
        body = {"name": name, "algorithm": "aes-256-gcm", "usage": "encrypt",
                "import": {"import_job_id": made["import_job_id"],
                           "wrapping_algorithm": RSA_OAEP_SHA256,
                           "wrapped_material": base64.b64encode(wrapped).decode()}}
        status, key = srv.call("POST", "/v1/keys", body, operator)
        assert status == 201, key
        return material

    def round_trip(name: str) -> None:
        status, enc = srv.call("POST", f"/v1/keys/{name}/encrypt", {"plaintext": MESSAGE},
                               service)
        assert status == 200, enc
        status, dec = srv.call("POST", f"/v1/keys/{name}/decrypt",
                               {"ciphertext": enc["ciphertext"]}, service)
        assert (status, dec.get("plaintext")) == (200, MESSAGE), dec
    try:
        before = job()
        status, body = srv.call("POST", "/v1/sys/rekey", {}, home.token())
        assert status == 200, body
        imported(before, "through-an-old-job")
        imported(job(), "after-the-rekey")
        round_trip("through-an-old-job")
        round_trip("after-the-rekey")
        pending = job()
        status, body = srv.call("POST", "/v1/sys/rekey", {}, home.token())
        assert status == 200, body  # it stopped halfway on the lost key
        imported(pending, "after-two-rekeys")
        for name in ("through-an-old-job", "after-the-rekey", "after-two-rekeys"):
            round_trip(name)
    finally:
        srv.stop()
    srv = home.serve(env(home))
    try:
        for name in ("through-an-old-job", "after-the-rekey", "after-two-rekeys"):
            round_trip(name)
    finally:
        srv.stop()


def test_an_online_rekey_is_refused_while_another_node_serves_the_sqlite_directory(
        tmp_path: Path) -> None:
    """Several `serve` processes may share one SQLite data directory: a rekey on one would
    leave the others with the old key, and what they wrote under it unreadable for good (a red
    team lost keys so). Refused (409) while another node is alive; once it is stopped, done."""
    from cluster import B64, Cluster
    nodes = Cluster(tmp_path)
    key_file = tmp_path / "master.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (nodes.secrets["FERROHSM_MASTER_KEY"] + "\n").encode())
    os.close(fd)
    config = tmp_path / "ferrohsm.toml"
    config.write_text(config.read_text() + f'[secrets]\nmaster_key_file = "{key_file}"\n')
    nodes.env.pop("FERROHSM_MASTER_KEY")
    try:
        nodes.add()
        nodes.add()
        status, key = nodes.call(1, "POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                         "usage": "encrypt"})
        assert status == 201, key
        status, refused = nodes.call(0, "POST", "/v1/sys/rekey", {"reason": "two nodes"})
        assert status == 409, refused
        assert "1 other node(s) serve this data directory" in refused["error"]["message"]
        status, out = nodes.call(1, "POST", f"/v1/keys/{key['id']}/encrypt",
                                 {"plaintext": B64(b"m")}, role="service")
        assert status == 200, out
        nodes.kill(1, signal.SIGTERM)
        status, done = nodes.call(0, "POST", "/v1/sys/rekey", {"reason": "one node"})
        assert status == 200 and done["rekeyed"], done
        status, opened = nodes.call(0, "POST", f"/v1/keys/{key['id']}/decrypt",
                                    {"ciphertext": out["ciphertext"]}, role="service")
        assert status == 200 and opened["plaintext"] == B64(b"m"), opened
    finally:
        nodes.stop()


def test_a_node_started_during_an_online_rekey_waits_for_it_and_joins_on_the_new_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Node A rekeys online (slowed at its second record); node B starts on the same SQLite
    data directory meanwhile. B must wait for the rekey (it holds the start-up lock), not take
    the journal for a crashed rekey and finish it beside A (a red team saw B do so: A's rekey
    then failed midway and refused every request until a restart), then serve on the new key."""
    import secrets as random
    import sys

    from live import LiveServer

    from ferrohsm.config import Secrets
    from ferrohsm.custody import rekey as rekey_steps
    master, hmac_key = random.token_bytes(32), random.token_bytes(32)
    jwt = base64.b64encode(random.token_bytes(32))  # the variable's text is the secret
    key_file = tmp_path / "master.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, base64.b64encode(master) + b"\n")
    os.close(fd)
    shared = f'[audit]\nsink = "sqlite"\n[secrets]\nmaster_key_file = "{key_file}"\n'
    a = LiveServer(tmp_path / "a", key_store="sqlite", config_text=shared,
                   overrides={("storage", "data_dir"): str(tmp_path / "data")},
                   secrets_=Secrets(master, jwt, hmac_key))
    b_log = tmp_path / "b.log"
    b: subprocess.Popen[bytes] | None = None
    try:
        ids = [a.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt"})[2]["id"]
               for _ in range(3)]
        sealed = a.call("POST", f"/v1/keys/{ids[0]}/encrypt", {"plaintext": MESSAGE},
                        role="service")[2]["ciphertext"]
        slowed, real = threading.Event(), rekey_steps.crash_point

        def slow(name: str) -> None:
            if name == "record:1":
                slowed.set()
                time.sleep(4)
            real(name)
        monkeypatch.setattr(rekey_steps, "crash_point", slow)
        answer: list[Any] = []
        rekeying = threading.Thread(target=lambda: answer.append(
            a.call("POST", "/v1/sys/rekey", {"reason": "with a node starting"})))
        rekeying.start()
        assert slowed.wait(20)
        port = free_port()
        config_b = tmp_path / "b.toml"
        config_b.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\n[storage]\nkey_store = "sqlite"'
                            f'\ndata_dir = "{tmp_path / "data"}"\n[tls]\ncert = "{a.pki.server_cert}"'
                            f'\nkey = "{a.pki.server_key}"\n' + shared)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
        env.update(FERROHSM_JWT_HS256_SECRET=jwt.decode(),
                   FERROHSM_AUDIT_HMAC_KEY=base64.b64encode(hmac_key).decode())
        with open(b_log, "wb") as log:
            b = subprocess.Popen([sys.executable, "-m", "ferrohsm", "serve", "--config",
                                  str(config_b)], cwd=ROOT, env=env, stdout=log, stderr=log)
        rekeying.join(60)
        assert answer and answer[0][0] == 200, answer
        conn_ok = wait_ready(port, a.ctx, b)
        assert conn_ok, b_log.read_text()[-3000:]
        text = b_log.read_text()
        assert "waiting for another node's start-up" in text and "resumed" not in text
        b_token = issue_token(jwt, subject="svc", role="service")
        for key_id in ids:  # B serves every key on the new key
            status, out = call_at(port, a.ctx, "POST", f"/v1/keys/{key_id}/encrypt",
                                  {"plaintext": MESSAGE}, b_token)
            assert status == 200, out
        status, out = call_at(port, a.ctx, "POST", f"/v1/keys/{ids[0]}/decrypt",
                              {"ciphertext": sealed}, b_token)
        assert status == 200 and out["plaintext"] == MESSAGE, out
    finally:
        if b is not None:
            b.terminate()
            b.wait(30)
        a.close()


ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call_at(port: int, ctx: Any, method: str, path: str, body: Any = None,
            token: str | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        return resp.status, json.loads(payload) if payload.startswith(b"{") else payload
    finally:
        conn.close()


def wait_ready(port: int, ctx: Any, proc: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if call_at(port, ctx, "GET", "/healthz")[0] == 200:
                return True
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.2)
    return False
