"""Split-knowledge unsealing and rekey through the real CLI and REST API (README, "Split-knowledge
unsealing and rekey"): ``ferrohsm init``, a server that starts sealed, ``ferrohsm unseal``,
``POST /v1/sys/seal``, and ``ferrohsm rekey`` killed with SIGKILL at every step and resumed with
the old or the new key, on the filesystem and SQLite stores. No share or master key may appear
in any log, audit record or file the service writes."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa, x25519
from custodykit import ROOT, SHARE_RE, Home, Server

from ferrohsm import app
from ferrohsm.config import load_config
from ferrohsm.crypto.importwrap import RSA_OAEP_SHA256, wrap_for_import
from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.crypto.seal import Sealer
from ferrohsm.domain.errors import IntegrityError
from ferrohsm.store.records import RecordCodec

MESSAGES = [f"message {i}".encode() for i in range(6)]


def actions(home: Home) -> list[tuple[str, str]]:
    return [(r["action"], r["outcome"]) for r in home.audit_records()]


def assert_no_secret_leaked(home: Home, *secrets: str) -> None:
    """No share (nor its value part) and no master key in any file of the home."""
    written = home.everything_written()
    for secret in secrets:
        assert secret not in written
        if secret.startswith("fhsm1-"):
            assert secret.split("-", 3)[3] not in written


def create_and_encrypt(srv: Server, home: Home) -> list[tuple[str, bytes, str]]:
    admin, service = home.token(), home.token("service")
    done = []
    for i, message in enumerate(MESSAGES):
        status, key = srv.call("POST", "/v1/keys", {"name": f"k{i}", "algorithm": "aes-256-gcm",
                                                    "usage": "encrypt"}, admin)
        assert status == 201, key
        if i % 2:
            assert srv.call("POST", f"/v1/keys/k{i}/rotate", {}, admin)[0] == 200
        status, enc = srv.call("POST", f"/v1/keys/k{i}/encrypt",
                               {"plaintext": base64.b64encode(message).decode()}, service)
        assert status == 200, enc
        done.append((f"k{i}", message, enc["ciphertext"]))
    return done


def decrypts(srv: Server, home: Home, items: list[tuple[str, bytes, str]]) -> None:
    service = home.token("service")
    for name, message, ciphertext in items:
        status, out = srv.call("POST", f"/v1/keys/{name}/decrypt", {"ciphertext": ciphertext},
                               service)
        assert status == 200, out
        assert base64.b64decode(out["plaintext"]) == message


# ---- init, sealed serving, unseal, seal ---------------------------------------------------

@pytest.mark.slow
def test_a_split_knowledge_server_starts_sealed_and_opens_with_a_threshold(
        tmp_path: Path) -> None:
    home = Home(tmp_path)
    shares = home.init(5, 3)
    assert len(shares) == 5 and len({s.split("-")[1] for s in shares}) == 1
    srv = home.serve()
    try:
        status, health = srv.call("GET", "/healthz")
        assert (status, health["sealed"], health["progress"], health["threshold"],
                health["shares"]) == (503, True, 0, 3, 5)
        assert srv.call("GET", "/livez") == (200, {"status": "alive"})  # liveness: alive
        status, body = srv.call("GET", "/v1/keys", token=home.token())
        assert status == 503 and body["error"]["code"] == "sealed"
        assert "ferrohsm unseal" in body["error"]["message"]
        assert srv.call("POST", "/v1/sys/unseal", {"share": "nonsense"})[0] == 400
        assert srv.call("POST", "/v1/sys/unseal", {"share": shares[0], "x": 1})[0] == 400

        out = srv.unseal_cli(shares[0])
        assert out.returncode == 0 and "1 of 3" in out.stdout
        again = srv.unseal_cli(shares[0])
        assert again.returncode == 1 and "already submitted" in again.stderr
        assert shares[0] not in again.stderr + out.stdout
        # a mistyped share is refused on its own (the custody file's commitments): not
        # counted, and the progress so far is kept (a forged share cannot reset it)
        value = shares[1].split("-", 3)[3]
        typo = shares[1][:-len(value)] + ("B" if value[0] != "B" else "C") + value[1:]
        progress = home.cli("unseal", "--server", srv.url, "--json", stdin=shares[2] + "\n")
        assert progress.returncode == 0, progress.stderr  # the API's answer, for scripts
        assert json.loads(progress.stdout) == {"sealed": True, "progress": 2, "threshold": 3,
                                               "shares": 5}
        wrong = srv.unseal_cli(typo)
        assert wrong.returncode == 1 and "not share 2" in wrong.stderr, wrong.stderr
        empty = home.cli("unseal", "--server", srv.url, stdin="")  # checked here, not sent
        assert empty.returncode == 2 and "no share given" in empty.stderr, empty.stderr
        assert "request id" not in empty.stderr
        assert srv.call("GET", "/healthz")[1]["progress"] == 2

        srv.unseal([shares[1]])
        status, health = srv.call("GET", "/healthz")
        assert status == 200 and health["sealed"] is False
        items = create_and_encrypt(srv, home)
        assert srv.call("POST", "/v1/sys/unseal", {"share": shares[0]})[1] == {
            "sealed": False, "progress": 0, "threshold": 3, "shares": 5}

        # sealing: Administrators only, then nothing but health and unseal
        status, body = srv.call("POST", "/v1/sys/seal", token=home.token("operator"))
        assert status == 403
        seal = home.cli("seal", "--server", srv.url, "--field", "sealed",
                        env=home.env(FERROHSM_TOKEN=home.token()))
        assert seal.returncode == 0 and seal.stdout == "true\n", seal.stderr
        assert srv.wait_sealed(True)["sealed"] is True
        status, body = srv.call("POST", f"/v1/keys/{items[0][0]}/decrypt",
                                {"ciphertext": items[0][2]}, home.token("service"))
        assert status == 503 and body["error"]["code"] == "sealed"

        srv.unseal([shares[2], shares[0], shares[4]])
        decrypts(srv, home, items)
    finally:
        srv.stop()
    done = actions(home)
    assert ("system.unseal_reset", "denied") not in done  # the typo was refused alone
    for expected in [("custody.init", "success"), ("system.unseal", "success"),
                     ("system.unseal", "denied"), ("system.unsealed", "success"),
                     ("system.seal", "success"), ("system.sealed", "success"),
                     ("request.refused", "denied")]:
        assert expected in done
    assert_no_secret_leaked(home, *shares)


@pytest.mark.slow
def test_sighup_reloads_a_split_knowledge_server_sealed_and_unsealed(tmp_path: Path) -> None:
    """``systemctl reload`` (SIGHUP) must not end a sealed server, whose restart needs the
    custodians again: sealed it re-reads the TLS files, unsealed the keysets too."""
    home = Home(tmp_path)
    shares = home.init(3, 2)
    srv = home.serve()
    try:
        srv.proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert srv.proc.poll() is None, "SIGHUP ended a sealed server"
        assert srv.call("GET", "/healthz")[1]["sealed"] is True
        srv.unseal(shares[:2])
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not [r for r in home.audit_records() if r["action"] == "auth.keyset_reload"]:
            assert time.monotonic() < deadline, "SIGHUP did not reload the keysets"
            time.sleep(0.2)
        assert srv.proc.poll() is None
        assert srv.call("GET", "/v1/keys", token=home.token())[0] == 200
    finally:
        srv.stop()

@pytest.mark.slow
def test_split_knowledge_backups_restore_with_a_threshold_of_shares(tmp_path: Path) -> None:
    """Nobody holds the master key: the custodians' shares open an offline backup and a
    restore, checked by the source's custody file copied into the new data directory; the
    restored server unseals with the same shares and decrypts what the source encrypted."""
    home = Home(tmp_path / "source")
    shares = home.init(3, 2)
    srv = home.serve()
    try:
        srv.unseal(shares[:2])
        items = create_and_encrypt(srv, home)
        online = tmp_path / "online.fhsmbak"
        done = home.cli("backup", "--out", str(online), "--server", srv.url,
                        env=home.env(FERROHSM_TOKEN=home.token()))
        assert done.returncode == 0, done.stderr
    finally:
        srv.stop()
    share_file = tmp_path / "share-3"
    share_file.write_text(shares[2] + "\n")
    offline = tmp_path / "offline.fhsmbak"
    done = home.cli("backup", "--offline", "--config", str(home.config), "--out", str(offline),
                    "--share-file", str(share_file), stdin=shares[0] + "\n")
    assert done.returncode == 0, done.stderr
    assert "1 of 2 shares" in done.stderr and "wrote" in done.stdout
    refused = home.cli("backup", "--offline", "--config", str(home.config), "--out",
                       str(tmp_path / "never.fhsmbak"), stdin=f"{shares[0]}\n{shares[0]}\n")
    assert refused.returncode == 2 and "already submitted" in refused.stderr
    assert not (tmp_path / "never.fhsmbak").exists()
    backups = [(r["outcome"], r["message"]) for r in home.audit_records()
               if r["action"] == "system.backup"]
    assert backups[-2][0] == "success" and backups[-1][0] == "denied"
    assert "offline backup refused" in backups[-1][1]

    target = Home(tmp_path / "target", jwt=home.jwt, hmac_key=home.hmac_key)
    restore = ["restore", str(online), "--config", str(target.config)]
    done = target.cli(*restore, stdin="\n".join(shares[:2]) + "\n")
    assert done.returncode == 2 and "copy the source data directory's custody.json" in done.stderr
    target.data.mkdir(mode=0o700)
    shutil.copy(home.data / "custody.json", target.data / "custody.json")
    value = shares[1].split("-", 3)[3]
    typo = shares[1][:-len(value)] + ("B" if value[0] != "B" else "C") + value[1:]
    done = target.cli(*restore, stdin=f"{shares[0]}\n{typo}\n")
    assert done.returncode == 2 and "not share 2" in done.stderr, done.stderr
    assert sorted(p.name for p in target.data.iterdir()) == ["custody.json"]
    done = target.cli(*restore, "--share-file", str(share_file), stdin=shares[1] + "\n")
    assert done.returncode == 0, done.stderr
    assert "restored 6 key(s)" in done.stdout and "same shares" in done.stdout

    # as the README shows it: no config file, only the copied custody file names the mode
    bare = tmp_path / "bare"
    bare.mkdir(mode=0o700)
    shutil.copy(home.data / "custody.json", bare / "custody.json")
    done = target.cli("restore", str(online), "--data-dir", str(bare), "--key-store",
                      "filesystem", "--share-file", str(share_file), stdin=shares[1] + "\n")
    assert done.returncode == 0, done.stderr

    restored = target.serve()
    try:
        assert restored.call("GET", "/healthz")[1]["sealed"] is True
        restored.unseal([shares[1], shares[0]])
        decrypts(restored, target, items)
    finally:
        restored.stop()
    assert_no_secret_leaked(home, *shares)
    assert_no_secret_leaked(target, *shares)


def test_shares_are_refused_outside_split_knowledge_and_online(tmp_path: Path) -> None:
    home = Home(tmp_path, shamir=False)
    for argv in (["restore", str(tmp_path / "any.fhsmbak"), "--config", str(home.config)],
                 ["backup", "--offline", "--config", str(home.config), "--out",
                  str(tmp_path / "b.fhsmbak")]):
        done = home.cli(*argv, "--share-file", str(tmp_path / "s"))
        assert done.returncode == 2 and "for split-knowledge mode" in done.stderr, done.stderr
    done = home.cli("backup", "--out", str(tmp_path / "c.fhsmbak"), "--share-file", "s")
    assert done.returncode != 0 and "--share-file: only with --offline" in done.stderr


@pytest.mark.slow
def test_init_refuses_a_used_data_directory_and_bad_counts(tmp_path: Path) -> None:
    home = Home(tmp_path)
    for shares, threshold in ((3, 1), (2, 3), (300, 2)):
        out = home.cli("init", "--config", str(home.config), "--shares", str(shares),
                       "--threshold", str(threshold))
        assert out.returncode == 2 and "threshold" in out.stderr
    home.init(3, 2)
    again = home.cli("init", "--config", str(home.config), "--shares", "3", "--threshold", "2")
    assert again.returncode == 2 and "already initialised" in again.stderr
    with_env_key = home.cli("unseal", "--server", "https://127.0.0.1:1", stdin="x\n")
    assert with_env_key.returncode == 1 and "Traceback" not in with_env_key.stderr


INIT_KILLED = """
import os, signal, sys
from ferrohsm.cli import custody

def killed(*args, **kwargs):  # the custody file is saved, its record not yet written
    os.kill(os.getpid(), signal.SIGKILL)
custody.audit_cli_event = killed
from ferrohsm.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_an_init_killed_before_its_record_starts_over_and_one_after_it_says_what_to_do(
        tmp_path: Path) -> None:
    """Killed after saving the custody file, before recording it (so before any share was
    issued), init refused forever as "already initialised" (an outside drill)."""
    home = Home(tmp_path / "home")
    args = ("init", "--config", str(home.config), "--shares", "3", "--threshold", "2")
    killed = subprocess.run([sys.executable, "-c", INIT_KILLED, *args], cwd=ROOT,
                            capture_output=True, text=True, env=home.env(), timeout=120)
    assert killed.returncode == -signal.SIGKILL and not SHARE_RE.findall(killed.stdout)
    assert (home.data / "custody.json").exists()
    again = home.cli(*args)
    assert again.returncode == 0 and "starting over" in again.stderr, again.stderr
    shares = SHARE_RE.findall(again.stdout)
    assert len(shares) == 3 and ("custody.init", "success") in actions(home)
    refused = home.cli(*args)  # initialised (or its shares lost after the record): refused
    assert refused.returncode == 2 and "use a new data directory" in refused.stderr
    assert_no_secret_leaked(home, *shares)


@pytest.mark.slow
def test_unseal_is_rate_limited_and_a_sealed_server_needs_its_audit_log(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.init(3, 2)
    env_key = home.cli("serve", "--config", str(home.config),
                       env=home.env(FERROHSM_MASTER_KEY=home.master))
    assert env_key.returncode == 2 and "unset FERROHSM_MASTER_KEY" in env_key.stderr
    srv = home.serve()
    try:
        malformed: list[Any] = ["", "x", {}, {"share": 123}, [], {"share": "fhsm1-00000000-0-AAAA"}]
        answers = [srv.call("POST", "/v1/sys/unseal", body)[0] for body in malformed]
        answers += [srv.call("POST", "/v1/sys/unseal", {"share": "fhsm1-00000000-1-AAAA"})[0]
                    for _ in range(15)]
        assert answers[:20] == [400] * 20 and answers[20] == 429
        assert srv.call("POST", "/v1/sys/unseal", {"share": "x"})[0] == 429
    finally:
        srv.stop()
    unseals = [r for r in home.audit_records() if r["action"] == "system.unseal"]
    denied = [r for r in unseals if r["message"].startswith("submission refused")]
    assert len(denied) == len(malformed), unseals  # every submission is audited
    limited = [r for r in unseals if "429" in r["message"]]
    assert 1 <= len(limited) <= 2 and all(r["outcome"] == "denied" for r in limited)  # 1 a second
    assert "AAAA" not in json.dumps(unseals)  # never the share
    for path in (home.data / "audit").iterdir():
        path.unlink()
    refused = home.cli("serve", "--config", str(home.config))
    assert refused.returncode == 1 and "audit log" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_sealed_server_on_a_busy_port_exits_4_as_an_unsealed_one(tmp_path: Path) -> None:
    """Exit 4, which systemd retries, with the cannot-listen line; it was exit 2 (the unit's
    RestartPreventExitStatus) with "cannot error a file of the data directory"."""
    home = Home(tmp_path)
    home.init(3, 2)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = home.cli("serve", "--config", str(home.config), "--listen", f"127.0.0.1:{port}")
    assert done.returncode == 4, done.stderr
    last = json.loads(done.stderr.strip().splitlines()[-1])  # a JSON line, like every other
    assert last["level"] == "critical" and last["message"] == (
        f"cannot listen on 127.0.0.1:{port}: the address is already in use (another "
        "server, or an old one still running?): stop it or choose another --listen port")


@pytest.mark.slow
def test_shares_encrypted_to_custodian_keys(tmp_path: Path) -> None:
    home = Home(tmp_path, store="sqlite")
    keys: list[x25519.X25519PrivateKey | rsa.RSAPrivateKey] = [
            x25519.X25519PrivateKey.generate(),
            rsa.generate_private_key(public_exponent=65537, key_size=3072),
            x25519.X25519PrivateKey.generate()]
    pubs, privs = [], []
    for i, key in enumerate(keys):
        privs.append(tmp_path / f"custodian-{i}.key")
        privs[-1].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
        pubs.append(tmp_path / f"custodian-{i}.pub")
        pubs[-1].write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    short = home.cli("init", "--config", str(home.config), "--shares", "3", "--threshold", "2",
                     "--custodian-key", str(pubs[0]))
    assert short.returncode == 2 and "one --custodian-key per share" in short.stderr
    out = home.cli("init", "--config", str(home.config), "--shares", "3", "--threshold", "2",
                   "--out-dir", str(tmp_path / "out"),
                   *[arg for p in pubs for arg in ("--custodian-key", str(p))])
    assert out.returncode == 0, out.stderr
    assert not SHARE_RE.search(out.stdout)
    files = [tmp_path / "out" / f"share-{i}.enc" for i in (1, 2, 3)]
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    srv = home.serve()
    try:
        wrong_key = home.cli("unseal", "--server", srv.url, "--share-file", str(files[0]),
                             "--private-key", str(privs[1]))
        assert wrong_key.returncode == 2 and "cannot open" in wrong_key.stderr
        for share_file, private in ((files[1], privs[1]), (files[2], privs[2])):
            res = home.cli("unseal", "--server", srv.url, "--share-file", str(share_file),
                           "--private-key", str(private))
            assert res.returncode == 0, res.stderr
        assert srv.call("GET", "/healthz")[1]["sealed"] is False
    finally:
        srv.stop()
    # offline, shares encrypted to two custodians open in one run, each with its own key
    backup = home.cli("backup", "--offline", "--config", str(home.config), "--out",
                      str(tmp_path / "two.bak"), "--share-file", str(files[0]), "--share-file",
                      str(files[1]), "--private-key", str(privs[1]), "--private-key",
                      str(privs[0]))
    assert backup.returncode == 0, backup.stderr
    assert (tmp_path / "two.bak").stat().st_size > 0


# ---- rekey: kill -9 at every step --------------------------------------------------------

def readable_under_old_or_new(home: Home, old: bytes, new: bytes) -> int:
    """Every key record passes its MAC and every version unseals, under one of the keys."""
    config = load_config(str(home.config), env={})
    store = app.open_store(config, RecordMac.derive(new))
    codecs = [(RecordCodec(RecordMac.derive(k)), Sealer(k)) for k in (old, new)]
    seen: list[str] = []

    def check(key_id: str, raw: bytes) -> None:
        for codec, sealer in codecs:
            try:
                key = codec.decode(key_id, raw)
            except IntegrityError:
                continue
            for v in key.versions:
                if v.sealed is not None:
                    sealer.unseal(v.sealed, key_id=key.id, version=v.version,
                                  algorithm=key.algorithm)
            seen.append(key_id)
            return
        raise AssertionError(f"key {key_id} is readable under neither master key")
    try:
        store.rewrite_records(check)  # reads only: check returns None
    finally:
        store.close()
    return len(seen)


KILL_POINTS = ("handed-out", "journal", "record:0", "record:3", "converted", "committed",
               "recorded")


@pytest.mark.slow
@pytest.mark.parametrize("store", ["filesystem", "sqlite"])
def test_rekey_in_env_mode_survives_kill_9_at_every_step(tmp_path: Path, store: str) -> None:
    home = Home(tmp_path, store=store, shamir=False)
    srv = home.serve()
    items = create_and_encrypt(srv, home)
    srv.stop()
    old = base64.b64decode(home.master)
    no_file = home.cli("rekey", "--config", str(home.config))
    assert no_file.returncode == 2 and "--new-master-key-file" in no_file.stderr
    records = len(home.audit_records())
    for flags in (("--shares", "5"), ("--threshold", "3"), ("--share-file", "/nonexistent")):
        ignored = home.cli("rekey", "--config", str(home.config), "--new-master-key-file",
                           str(tmp_path / "unused.key"), *flags)
        assert ignored.returncode == 2 and "for split-knowledge mode" in ignored.stderr
    assert not (tmp_path / "unused.key").exists() and len(home.audit_records()) == records
    for round_, point in enumerate(KILL_POINTS):
        key_file = tmp_path / f"master-{round_}.key"
        args = ("rekey", "--config", str(home.config), "--new-master-key-file", str(key_file))
        done_before = actions(home).count(("custody.rekey_done", "success"))
        killed = home.cli(*args, env=home.env(FERROHSM_REKEY_KILL_AT=point))
        assert killed.returncode == -9, killed.stderr
        assert key_file.stat().st_mode & 0o777 == 0o600
        # killed once done is recorded, before the journal says so: the record is there
        assert actions(home).count(("custody.rekey_done", "success")) == done_before + (
            point == "recorded")
        new = base64.b64decode(key_file.read_text())
        assert readable_under_old_or_new(home, old, new) == len(MESSAGES)
        if point != "handed-out":  # the journal is written: records may be under two keys
            refused = home.cli("serve", "--config", str(home.config))
            assert refused.returncode == 2 and "interrupted" in refused.stderr
        # resume with the old key, or (once the journal exists) with the new one
        resume_with = new if round_ % 2 and point != "handed-out" else old
        resumed = home.cli(*args, env=home.env(
            FERROHSM_MASTER_KEY=base64.b64encode(resume_with).decode()))
        assert resumed.returncode == 0, resumed.stderr
        assert readable_under_old_or_new(home, new, new) == len(MESSAGES)
        old, home.master = new, base64.b64encode(new).decode()
    again = home.cli(*args)  # the finished rekey's key file, the key now current: refused
    assert again.returncode != 0 and "holds the current master key" in again.stderr
    srv = home.serve()  # reconciliation settles the intents the kills left open
    try:
        decrypts(srv, home, items)
        for name, _, _ in items:  # the rewritten records take further changes
            assert srv.call("POST", f"/v1/keys/{name}/rotate", {}, home.token())[0] == 200
    finally:
        srv.stop()
    done = actions(home)
    assert ("custody.rekey_started", "success") in done
    assert ("custody.rekey_resumed", "success") in done
    assert ("custody.rekey_done", "success") in done
    assert ("key.rekey", "intent") in done and ("key.rekey", "success") in done
    verify = home.cli("audit", "verify", str(home.data / "audit"))
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.slow
def test_rekey_in_split_knowledge_mode_issues_new_shares_and_survives_kill_9(
        tmp_path: Path) -> None:
    home = Home(tmp_path, store="sqlite")
    first = home.init(3, 2)
    srv = home.serve()
    srv.unseal(first[:2])
    items = create_and_encrypt(srv, home)
    srv.stop()
    args = ("rekey", "--config", str(home.config), "--shares", "4", "--threshold", "3")
    killed = home.cli(*args, stdin="\n".join(first[1:]) + "\n",
                      env=home.env(FERROHSM_REKEY_KILL_AT="record:2"))
    assert killed.returncode == -9
    second = SHARE_RE.findall(killed.stdout)
    assert len(second) == 4 and second[0].split("-")[1] != first[0].split("-")[1]
    # resumed with three of the NEW shares (printed before anything was re-sealed)
    resumed = home.cli(*args, stdin="\n".join(second[1:]) + "\n")
    assert resumed.returncode == 0, resumed.stderr
    assert not SHARE_RE.findall(resumed.stdout)  # the pending split's shares stay the ones
    # a second rekey, killed after its commit, resumed with the OLD (second) shares
    killed = home.cli("rekey", "--config", str(home.config), stdin="\n".join(second[:3]) + "\n",
                      env=home.env(FERROHSM_REKEY_KILL_AT="committed"))
    assert killed.returncode == -9
    third = SHARE_RE.findall(killed.stdout)
    resumed = home.cli("rekey", "--config", str(home.config), stdin="\n".join(second[:3]) + "\n")
    assert resumed.returncode == 0, resumed.stderr
    # resumed with the OLD shares: the killed run's output may be lost (a dropped session), so
    # finishing onto its split could leave the store under shares nobody holds (an outside
    # tester lost every key so): a fresh split of the new key is handed out instead
    fourth = SHARE_RE.findall(resumed.stdout)
    assert len(fourth) == 4 and fourth[0].split("-")[1] != third[0].split("-")[1]
    assert "void" in resumed.stderr
    srv = home.serve()
    try:
        old = srv.unseal_cli(first[0])
        assert old.returncode == 1 and "belongs to split" in old.stderr
        void = srv.unseal_cli(third[0])
        assert void.returncode == 1 and "belongs to split" in void.stderr
        srv.unseal(fourth[1:4])
        decrypts(srv, home, items)
    finally:
        srv.stop()
    assert_no_secret_leaked(home, *first, *second, *third, *fourth)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["filesystem", "sqlite"])
def test_an_offline_rekey_beside_a_running_server_is_refused(tmp_path: Path, store: str) -> None:
    """SQLite took no lock a serving node held: the rekey ran, and the live server went on
    sealing new keys under the old master key, lost at its next start (an outside drill)."""
    home = Home(tmp_path, store=store, shamir=False)
    srv = home.serve()
    try:
        items = create_and_encrypt(srv, home)
        key_file = tmp_path / "master-new.key"
        refused = home.cli("rekey", "--config", str(home.config), "--new-master-key-file",
                           str(key_file))
        assert refused.returncode != 0 and "in use by" in refused.stderr, refused.stderr
        assert not key_file.exists()
        decrypts(srv, home, items)  # the store is as it was, under the key the server has
    finally:
        srv.stop()
    assert not [a for a in actions(home) if a[0].startswith("custody.rekey")
                and a[1] != "denied"]  # (the filesystem store's refusal is recorded as such)


@pytest.mark.slow
def test_offline_rekey_checks_its_flags_first_and_records_each_refused_attempt(
        tmp_path: Path) -> None:
    """Bad flags are refused before a share is read, with no record (nothing was attempted);
    a rekey refused for its shares leaves exactly one denied record saying why, never a
    ``custody.rekey_started`` success without an outcome."""
    home = Home(tmp_path / "home")
    first = home.init(3, 2)
    files = []
    for i, share in enumerate(first, 1):
        path = tmp_path / f"s{i}"
        path.write_text(share + "\n")
        files += ["--share-file", str(path)]
    rekey = ("rekey", "--config", str(home.config))
    before = len(home.audit_records())
    for flags in (("--shares", "2", "--threshold", "3"), ("--shares", "300"),
                  ("--threshold", "1", "--shares", "1")):
        out = home.cli(*rekey, *flags)  # no share given: a prompt would read empty stdin
        assert out.returncode == 2, out.stderr
        assert "need 2 <= --threshold <= --shares <= 255" in out.stderr, out.stderr
    new_key = tmp_path / "nk"
    out = home.cli(*rekey, *files, "--new-master-key-file", str(new_key))
    assert out.returncode == 2 and "--new-master-key-file is for environment" in out.stderr
    assert not new_key.exists() and not SHARE_RE.findall(out.stdout)
    assert len(home.audit_records()) == before
    split, value = first[0].split("-")[1], first[0].split("-", 3)[3]
    mistyped = f"fhsm1-{split}-3-{value}"  # share 1's value under number 3
    foreign = Home(tmp_path / "other").init(3, 2)[0]
    cases = {"not share 3": [first[0], mistyped],
             "already submitted": [first[0], first[0]],
             "belongs to split": [foreign]}
    for why, shares in cases.items():
        out = home.cli(*rekey, stdin="\n".join(shares) + "\n")
        assert out.returncode == 2 and why in out.stderr, out.stderr
        assert "progress was reset" not in out.stderr and "Traceback" not in out.stderr
        new = home.audit_records()[before:]
        assert [(r["action"], r["outcome"]) for r in new] == [
            ("custody.rekey_started", "denied")], new
        assert why in new[0]["message"] and "refused" in new[0]["message"]
        before += 1
    assert_no_secret_leaked(home, *first)


@pytest.mark.slow
def test_a_record_the_rekey_cannot_convert_refuses_it_before_anything_changes(
        tmp_path: Path) -> None:
    """One damaged record used to stop the rekey halfway, every run, and the server then
    refused to start (a journal still running): 300 keys offline for one bad record. Now the
    dry run refuses with nothing changed (no journal, no new key file), and --leave-damaged
    rekeys the others; an import job made before the rekey still works after it."""
    home = Home(tmp_path, store="filesystem", shamir=False)
    srv = home.serve()
    items = create_and_encrypt(srv, home)
    status, job = srv.call("POST", "/v1/import-jobs", {}, home.token("operator"))
    assert status in (200, 201), job
    srv.stop()
    [victim] = [p for p in (home.data / "keys").rglob("*") if p.is_file()
                and b'"name":"k0"' in p.read_bytes().replace(b" ", b"")]
    victim.write_bytes(victim.read_bytes().replace(b'"enabled"', b'"disabld"', 1))
    key_file = tmp_path / "new.key"
    args = ("rekey", "--config", str(home.config), "--new-master-key-file", str(key_file))
    refused = home.cli(*args)
    assert refused.returncode == 2 and "cannot be re-sealed" in refused.stderr, refused.stderr
    assert "--leave-damaged" in refused.stderr and not key_file.exists()
    assert ("custody.rekey_started", "denied") in actions(home)
    srv = home.serve()  # nothing changed: the server starts, the other keys serve
    try:
        decrypts(srv, home, items[1:])
    finally:
        srv.stop()
    done = home.cli(*args, "--leave-damaged")
    assert done.returncode == 0, done.stderr
    new = key_file.read_text().strip()
    srv = home.serve(home.env(FERROHSM_MASTER_KEY=new))
    try:
        decrypts(srv, home, items[1:])
        status, _ = srv.call("POST", "/v1/keys/k0/decrypt", {"ciphertext": items[0][2]},
                             home.token("service"))
        assert status >= 400  # the damaged record stays unreadable, as before the rekey
        material = os.urandom(32)
        wrapped = wrap_for_import(job["public_key"], RSA_OAEP_SHA256, material)
        status, key = srv.call("POST", "/v1/keys", {
            "name": "through-a-job-of-before", "algorithm": "aes-256-gcm", "usage": "encrypt",
            "import": {"import_job_id": job["import_job_id"],
                       "wrapping_algorithm": RSA_OAEP_SHA256,
                       "wrapped_material": base64.b64encode(wrapped).decode()}},
            home.token("operator"))
        assert status == 201, key  # the job was re-sealed with the keys
    finally:
        srv.stop()


@pytest.mark.slow
def test_new_shares_are_recorded_before_they_are_shown(tmp_path: Path) -> None:
    """Shown and then killed before they were recorded, new shares opened nothing, and a
    custodian who had thrown the old share away had lost the store. Now they are recorded
    first; a run stopped before its journal changed nothing, its new shares are refused as
    such, and the current ones still rekey."""
    home = Home(tmp_path, store="sqlite")
    first = home.init(3, 2)
    srv = home.serve()
    srv.unseal(first[:2])
    srv.stop()
    rekey_args = ("rekey", "--config", str(home.config))
    killed = home.cli(*rekey_args, stdin="\n".join(first[:2]) + "\n",
                      env=home.env(FERROHSM_REKEY_KILL_AT="recorded"))
    assert killed.returncode == -9 and not SHARE_RE.findall(killed.stdout)
    custody = json.loads((home.data / "custody.json").read_text())
    assert custody.get("pending"), "the new split is recorded before any share is shown"
    killed = home.cli(*rekey_args, stdin="\n".join(first[:2]) + "\n",
                      env=home.env(FERROHSM_REKEY_KILL_AT="handed-out"))
    assert killed.returncode == -9
    shown = SHARE_RE.findall(killed.stdout)
    assert len(shown) == 3
    refused = home.cli(*rekey_args, stdin="\n".join(shown[:2]) + "\n")
    assert refused.returncode == 2, refused.stderr
    assert "stopped before it changed anything" in refused.stderr
    done = home.cli(*rekey_args, stdin="\n".join(first[1:]) + "\n")
    assert done.returncode == 0, done.stderr
    assert "re-sealing" in done.stderr and len(SHARE_RE.findall(done.stdout)) == 3
