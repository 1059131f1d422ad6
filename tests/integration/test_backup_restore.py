"""Backup and restore end to end (issue 17, item 3): a real server writes keys, ciphertexts,
signatures and a parked approval; ``ferrohsm backup`` archives its stopped data directory;
``ferrohsm restore`` puts it into an empty filesystem, SQLite (and PostgreSQL, once that store
exists) store; a real server started on the restored data decrypts every old ciphertext and
verifies every old signature. Tampered archives, wrong keys, a non-empty target and a kill -9
at several points of a restore are refused or recoverable, never served half-restored."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from live import LiveServer

from ferrohsm.audit.segments import list_segments, segment_name
from ferrohsm.cli.main import main
from ferrohsm.config import Secrets
from ferrohsm.integrity.logcheck import StartupRefused

ROOT = Path(__file__).resolve().parents[2]
POLICY = """
[policy.tags.pci]
approvals_required = 1
approval_actions = ["rotate"]
approval_ttl_seconds = 3600
"""
HAS_POSTGRES = importlib.util.find_spec("ferrohsm.store.postgres") is not None
STORES = ["filesystem", "sqlite",
          pytest.param("postgres", marks=pytest.mark.skipif(
              not HAS_POSTGRES, reason="ferrohsm.store.postgres is not merged yet"))]


def B(data: bytes) -> str:  # noqa: N802  a base64 literal in bodies
    return base64.b64encode(data).decode()


def env_of(s: Secrets) -> dict[str, str]:
    return {"FERROHSM_MASTER_KEY": B(s.master_key),
            "FERROHSM_JWT_HS256_SECRET": s.jwt_hs256_secret.hex(),
            "FERROHSM_AUDIT_HMAC_KEY": B(s.audit_hmac_key)}


def new_secrets(master: bytes | None = None) -> Secrets:
    return Secrets(master or secrets.token_bytes(32), secrets.token_bytes(32),
                   secrets.token_bytes(32))


@dataclass
class Source:
    secrets: Secrets
    data_dir: Path
    archive: Path
    ciphertexts: list[tuple[str, str, bytes]] = field(default_factory=list)
    signatures: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    key_ids: list[str] = field(default_factory=list)
    approval_id: str = ""
    revoked_token: str = ""  # revoked on the source before the backup


def same_tokens(s: Secrets) -> Secrets:
    """A restore target's secrets: the source's master key and JWT secret (its tokens still
    sign), a new audit key."""
    return Secrets(s.master_key, s.jwt_hs256_secret, secrets.token_bytes(32))


def records(data_dir: Path) -> list[dict[str, Any]]:
    """Every record of a file-sink audit log, in order."""
    directory = data_dir / "audit"
    lines: list[dict[str, Any]] = []
    for n in list_segments(str(directory)):
        with open(directory / segment_name(n), "rb") as f:
            lines.extend(json.loads(line) for line in f if line.strip())
    return lines


def cli(args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    for name in ("FERROHSM_BACKUP_KEY", "FERROHSM_DATA_DIR", "FERROHSM_KEY_STORE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def populate(srv: LiveServer, src: Source) -> None:
    for algorithm, usage, name in (("aes-256-gcm", "encrypt", "payments"),
                                   ("ec-p256", "sign", "release"),
                                   ("rsa-2048", "sign", "legacy")):
        status, _, key = srv.call("POST", "/v1/keys", {"algorithm": algorithm, "usage": usage,
                                                       "name": name})
        assert status == 201, key
        src.key_ids.append(key["id"])
    aes = src.key_ids[0]
    for round_ in range(2):  # two versions: the old one must decrypt after restore too
        for text in (b"card 4111", b"card 5500"):
            plain = text + bytes([round_])
            _, _, ct = srv.call("POST", f"/v1/keys/{aes}/encrypt", {"plaintext": B(plain)},
                                role="service")
            src.ciphertexts.append((aes, ct["ciphertext"], plain))
        if round_ == 0:
            assert srv.call("POST", f"/v1/keys/{aes}/rotate", role="operator")[0] == 200
    for key_id in src.key_ids[1:]:
        body = {"message": B(b"build artefact " + key_id.encode())}
        status, _, sig = srv.call("POST", f"/v1/keys/{key_id}/sign", body, role="service")
        assert status == 200, sig
        src.signatures.append((key_id, {**body, "signature": sig["signature"]}))
    status, _, tagged = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                      "usage": "encrypt", "tags": ["pci"]})
    src.key_ids.append(tagged["id"])
    status, _, parked = srv.call("POST", f"/v1/keys/{tagged['id']}/rotate", role="operator")
    assert status == 202, parked
    src.approval_id = parked["approval"]["id"]
    revoke_a_token(srv, src)


def revoke_a_token(srv: LiveServer, src: Source) -> None:
    """A token that worked, revoked by jti: refused from then on, here and after a restore."""
    src.revoked_token = srv.token("operator", subject="leaked-ci", jti="leaked-before-backup")
    assert srv.call("GET", "/v1/keys", token=src.revoked_token)[0] == 200
    status, _, body = srv.call("POST", "/v1/tokens/revoke", {"jti": "leaked-before-backup"})
    assert status == 200 and body["revoked"] is True, body
    assert srv.call("GET", "/v1/keys", token=src.revoked_token)[0] == 401


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    base = tmp_path_factory.mktemp("source")
    src = Source(new_secrets(), base / "data", base / "ferrohsm.fhsmbak")
    srv = LiveServer(base, key_store="filesystem", config_text=POLICY, secrets_=src.secrets)
    try:
        populate(srv, src)
    finally:
        srv.close()
    mp = pytest.MonkeyPatch()
    try:
        for name, value in env_of(src.secrets).items():
            mp.setenv(name, value)
        mp.delenv("FERROHSM_BACKUP_KEY", raising=False)
        code = main(["backup", "--offline", "--data-dir", str(src.data_dir), "--key-store",
                     "filesystem", "--out", str(src.archive)])
    finally:
        mp.undo()
    assert code == 0
    yield src


def start(base: Path, kind: str, s: Secrets, dsn: str = "") -> LiveServer:
    extra: dict[tuple[str, str], Any] = {("storage", "postgres_dsn_env"): "FERROHSM_POSTGRES_DSN"} if dsn else {}
    return LiveServer(base, key_store=kind, config_text=POLICY, secrets_=s, overrides=extra)


def restore_args(archive: Path, data_dir: Path, kind: str) -> list[str]:
    return ["restore", str(archive), "--data-dir", str(data_dir), "--key-store", kind]


def check_everything_works(srv: LiveServer, src: Source) -> None:
    for key_id, ciphertext, plain in src.ciphertexts:
        status, _, out = srv.call("POST", f"/v1/keys/{key_id}/decrypt",
                                  {"ciphertext": ciphertext}, role="service")
        assert status == 200, out
        assert base64.b64decode(out["plaintext"]) == plain
    for key_id, body in src.signatures:
        status, _, out = srv.call("POST", f"/v1/keys/{key_id}/verify", body, role="service")
        assert status == 200 and out["valid"] is True, out
    status, _, approval = srv.call("GET", f"/v1/approvals/{src.approval_id}")
    assert status == 200 and approval["state"] == "pending", approval
    status, _, page = srv.call("GET", "/v1/keys?limit=100", role="auditor")
    assert sorted(k["id"] for k in page["keys"]) == sorted(src.key_ids)
    if srv.secrets.jwt_hs256_secret == src.secrets.jwt_hs256_secret:
        # the source's tokens sign here: the one revoked before the backup stays refused
        status, _, body = srv.call("GET", "/v1/keys", token=src.revoked_token)
        assert status == 401 and body["error"]["code"] == "unauthenticated", body
        assert srv.call("GET", "/v1/keys", token=srv.token(
            "operator", subject="leaked-ci", jti="never-revoked"))[0] == 200


def test_the_archive_is_private_self_describing_and_audited(source: Source) -> None:
    assert stat.S_IMODE(source.archive.stat().st_mode) == 0o600
    data = source.archive.read_bytes()
    magic, header, _ = data.split(b"\n", 2)
    assert magic == b"FERROHSM-BACKUP 1"
    head = json.loads(header)
    assert head["key_count"] == 4 and head["approval_count"] == 1
    assert head["revoked_token_count"] == 1
    assert head["source_store"] == "filesystem" and head["backup_key"]["kind"] == "derived"
    log = records(source.data_dir)
    backup = [r for r in log if r["action"] == "system.backup"]
    assert len(backup) == 1 and backup[0]["details"]["key_count"] == 4
    assert head["audit_head"]["seq"] == backup[0]["seq"] - 1
    for secret in (source.secrets.master_key, source.secrets.audit_hmac_key):
        assert secret not in data and B(secret).encode() not in data
    assert b"card 4111" not in data


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORES)
def test_restore_into_each_store_decrypts_and_verifies(
        source: Source, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    with ExitStack() as stack:
        dsn = _postgres_dsn(kind, monkeypatch, stack)
        target = same_tokens(source.secrets)  # same master key and JWT secret, new audit key
        code, out, err = cli(restore_args(source.archive, tmp_path / "data", kind),
                             env_of(target), monkeypatch, capsys)
        assert code == 0, err
        assert "restored 4 key(s), 1 approval(s) and 1 token revocation(s)" in out
        assert "Tokens revoked in the source after the archive was taken" in out
        assert "revoke them again" in out and "FERROHSM_JWT_HS256_SECRET" in out
        deny_file = tmp_path / "data" / "revoked-tokens.json"
        in_file = deny_file.exists() and "leaked-before-backup" in deny_file.read_text()
        assert in_file == (kind != "postgres")  # PostgreSQL: its table, every node's
        if kind == "sqlite":  # lost while stopped: start-up rebuilds it from the new log
            deny_file.unlink()
        srv = start(tmp_path, kind, target, dsn)
        try:
            check_everything_works(srv, source)
        finally:
            srv.close()
    log = records(tmp_path / "data")
    first = next(r for r in log if r["action"] != "audit.genesis")  # the new log's first record
    assert first["action"] == "system.restored"
    backup = next(r for r in records(source.data_dir) if r["action"] == "system.backup")
    assert first["details"]["predecessor_seq"] == backup["details"]["audit_head_seq"]
    assert first["details"]["predecessor_hash"] == backup["details"]["audit_head_hash"]
    assert first["details"]["archive_sha256"] == backup["details"]["archive_sha256"]
    restored = [r for r in log if r["action"] == "key.restore" and r["outcome"] == "success"]
    assert sorted(r["key_id"] for r in restored) == sorted(source.key_ids)
    carried = [r for r in log if r["action"] == "token.revoke"]
    assert [(r["outcome"], r["details"]["jti"]) for r in carried] == [
        ("success", "leaked-before-backup")]
    completed = next(r for r in log if r["action"] == "system.restore_completed")
    assert completed["details"]["revoked_token_count"] == 1
    assert "1 token revocation(s)" in completed["message"]


def test_a_restore_says_when_the_archive_was_taken_and_that_destroyed_keys_come_back(
        source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An archive undoes every destruction after it (any copy of a key does): restore said only
    "restored N key(s)". Its output and its audit record now give the archive's time and say
    so (restore cannot know which keys were destroyed since: the source's log is not here)."""
    created = json.loads(source.archive.read_bytes().split(b"\n", 2)[1])["created_at"]
    code, out, err = cli(restore_args(source.archive, tmp_path / "data", "filesystem"),
                         env_of(new_secrets(source.secrets.master_key)), monkeypatch, capsys)
    assert code == 0, err
    said = (f"the keys are as they were when the archive was taken ({created}): a key "
            "destroyed or changed in the source since then is back as it was then")
    assert f"Note: {said}; destroy it again if its destruction must stand." in out
    assert "The AES-GCM encryption counts of the keys are the archive's too: rotate" in out
    restored = next(r for r in records(tmp_path / "data") if r["action"] == "system.restored")
    assert said in restored["message"] and restored["details"]["archive_created_at"] == created


def _postgres_dsn(kind: str, monkeypatch: pytest.MonkeyPatch, stack: ExitStack) -> str:
    """A fresh database of a throwaway PostgreSQL (tests/pgserver.py), stopped after the test.
    The setting's name is the PostgreSQL store's ([storage].postgres_dsn)."""
    if kind != "postgres":
        return ""
    import pgserver
    pgserver.skip_unless_available()
    server = stack.enter_context(pgserver.running())
    dsn: str = server.new_database()
    monkeypatch.setenv("FERROHSM_POSTGRES_DSN", dsn)
    return dsn


def _refused(archive: Path, tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str], expect: str) -> None:
    target = tmp_path / "target"
    code, _, err = cli(restore_args(archive, target, "sqlite"), env, monkeypatch, capsys)
    assert code == 1, err
    assert expect in err, err
    assert not target.exists(), "nothing may be written before the archive is verified"
    assert "Traceback" not in err


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def test_a_tampered_archive_is_refused_before_anything_is_written(
        source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    data = source.archive.read_bytes()
    header_end = data.index(b"\n", data.index(b"\n") + 1) + 1
    env = env_of(new_secrets(source.secrets.master_key))
    cases = {"magic": (_flip(data, 3), "not a FerroHSM backup archive"),
             "header": (data.replace(b'"key_count":4', b'"key_count":5'), "authentication"),
             "nonce": (_flip(data, header_end), "authentication"),
             "body": (_flip(data, (header_end + len(data)) // 2), "authentication"),
             "tag": (_flip(data, len(data) - 1), "authentication"),
             "truncated": (data[:-1], "authentication"),
             "cut in half": (data[:len(data) // 2], "authentication"),
             "cut in the header": (data[:header_end - 5], "header"),
             "blocks swapped": (data[:header_end + 12] + data[header_end + 28:header_end + 44]
                                + data[header_end + 12:header_end + 28]
                                + data[header_end + 44:], "authentication")}
    for name, (tampered, expect) in cases.items():
        path = tmp_path / f"{name.replace(' ', '-')}.fhsmbak"
        path.write_bytes(tampered)
        _refused(path, tmp_path, env, monkeypatch, capsys, expect)


def test_a_body_spliced_from_another_archive_is_refused(
        source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Two archives of the same data under the same key: the header of one with the body of
    the other (a record set swapped in) fails, since each body is bound to its header."""
    other = tmp_path / "second.fhsmbak"
    code, _, err = cli(["backup", "--offline", "--data-dir", str(source.data_dir), "--key-store",
                        "filesystem", "--out", str(other)], env_of(source.secrets),
                       monkeypatch, capsys)
    assert code == 0, err
    a, b = source.archive.read_bytes(), other.read_bytes()
    cut_a = a.index(b"\n", a.index(b"\n") + 1) + 1
    cut_b = b.index(b"\n", b.index(b"\n") + 1) + 1
    spliced = tmp_path / "spliced.fhsmbak"
    spliced.write_bytes(a[:cut_a] + b[cut_b:])
    env = env_of(new_secrets(source.secrets.master_key))
    _refused(spliced, tmp_path, env, monkeypatch, capsys, "authentication")


def test_wrong_master_or_backup_key_is_refused(
        source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _refused(source.archive, tmp_path, env_of(new_secrets()), monkeypatch, capsys,
             "wrong master key")
    data = source.archive.read_bytes()  # the backup key's id in the header edited by one digit
    named = json.loads(data.split(b"\n")[1])["backup_key"]["id"]
    edited = tmp_path / "edited.fhsmbak"
    edited.write_bytes(data.replace(named.encode(), (named[:-1] + (
        "0" if named[-1] != "0" else "1")).encode(), 1))
    _refused(edited, tmp_path, env_of(new_secrets(source.secrets.master_key)), monkeypatch,
             capsys, "the backup archive's header was altered")
    separate = B(secrets.token_bytes(32))
    archive = tmp_path / "separate.fhsmbak"
    code, out, err = cli(["backup", "--offline", "--data-dir", str(source.data_dir), "--key-store",
                          "filesystem", "--out", str(archive)],
                         {**env_of(source.secrets), "FERROHSM_BACKUP_KEY": separate},
                         monkeypatch, capsys)
    assert code == 0 and "separate backup key" in out, err
    same_master = env_of(new_secrets(source.secrets.master_key))
    _refused(archive, tmp_path, same_master, monkeypatch, capsys, "wrong backup key")
    _refused(archive, tmp_path, {**same_master, "FERROHSM_BACKUP_KEY": B(secrets.token_bytes(32))},
             monkeypatch, capsys, "wrong backup key")
    _refused(archive, tmp_path, {**env_of(new_secrets()), "FERROHSM_BACKUP_KEY": separate},
             monkeypatch, capsys, "wrong master key")
    key_file = tmp_path / "backup.key"
    key_file.write_text(separate)
    key_file.chmod(0o600)
    target = tmp_path / "from-file"
    code, out, err = cli([*restore_args(archive, target, "filesystem"), "--backup-key-file",
                          str(key_file)], same_master, monkeypatch, capsys)
    assert code == 0, err


def test_a_non_empty_target_is_refused(
        source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    env = env_of(new_secrets(source.secrets.master_key))
    target = tmp_path / "data"
    assert cli(restore_args(source.archive, target, "sqlite"), env, monkeypatch, capsys)[0] == 0
    code, _, err = cli(restore_args(source.archive, target, "sqlite"), env, monkeypatch, capsys)
    assert code == 1 and "restore needs an empty data directory" in err, err
    # a directory a server once started on (an audit log and a check value, no keys)
    fresh = tmp_path / "fresh"
    srv = LiveServer(fresh, key_store="filesystem", secrets_=new_secrets(
        source.secrets.master_key))
    srv.close()
    code, _, err = cli(restore_args(source.archive, fresh / "data", "filesystem"), env,
                       monkeypatch, capsys)
    assert code == 1 and "an audit log" in err, err


@pytest.mark.parametrize("kind", ["filesystem", "sqlite"])
def test_a_refused_target_holding_only_an_audit_log_is_left_as_it_was(
        source: Source, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The refusal came after the stores were made in it: the next restore into the same
    directory with the other store kind then read "holds a 'sqlite' key store"."""
    env = env_of(new_secrets(source.secrets.master_key))
    restored = tmp_path / "restored"
    assert cli(restore_args(source.archive, restored, kind), env, monkeypatch, capsys)[0] == 0
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    shutil.copytree(restored / "audit", target / "audit")
    before = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    for store in ("filesystem", "sqlite"):
        code, _, err = cli(restore_args(source.archive, target, store), env, monkeypatch, capsys)
        assert code == 1 and "an audit log" in err and "key store" not in err, err
        assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == before


def test_a_restore_says_a_file_witness_holds_another_log_and_start_up_says_why(
        source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The restored log is a new log: a witness of the source's stops its start, rightly, but
    the refusal read "damaged or not signed", and the restore said nothing of it."""
    target = same_tokens(source.secrets)
    witness = tmp_path / "witness.jsonl"
    shutil.copy(source.data_dir / "audit" / "checkpoints.jsonl", witness)  # the source's
    config = tmp_path / "restore.toml"
    config.write_text(f'[audit]\nwitness = "file:{witness}"\n')
    data_dir = tmp_path / "data"
    code, out, err = cli([*restore_args(source.archive, data_dir, "sqlite"), "--config",
                          str(config)], env_of(target), monkeypatch, capsys)
    assert code == 0, err
    assert f"The witness {witness} holds checkpoints of another log" in out
    with pytest.raises(StartupRefused, match=r"belongs to another audit log.*after a restore"):
        LiveServer(tmp_path, key_store="sqlite", config_text=POLICY, secrets_=target,
                   overrides={("audit", "witness"): f"file:{witness}"})
    srv = LiveServer(tmp_path, key_store="sqlite", config_text=POLICY, secrets_=target,
                     overrides={("audit", "witness"): f"file:{tmp_path / 'new-witness.jsonl'}"})
    try:
        check_everything_works(srv, source)
    finally:
        srv.close()


SLOWED = """
import pathlib, sys, time
from ferrohsm.custody import restore as r

begin = r.begin
def slowed(store):
    begin(store)
    pathlib.Path(sys.argv[sys.argv.index("--data-dir") + 1], "restore-begun").touch()
    time.sleep(3)  # the other restore starts meanwhile
r.begin = slowed
from ferrohsm.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_restores_at_once_into_one_sqlite_directory_leave_one_restored_store(
        source: Source, tmp_path: Path) -> None:
    """Nothing serialised them: the second took the first's store for an interrupted restore,
    deleted its keys and moved its live audit log aside, and a server started meanwhile was
    refused as if the restore had been interrupted (an outside DR drill)."""
    target = same_tokens(source.secrets)
    data_dir = tmp_path / "data"
    env = {**os.environ, **env_of(target), "PYTHONPATH": str(ROOT)}
    env.pop("FERROHSM_BACKUP_KEY", None)
    args = restore_args(source.archive, data_dir, "sqlite")
    runs = [subprocess.Popen([sys.executable, "-c", SLOWED, *args], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
    deadline = time.monotonic() + 60  # the first one has set its restore marker: go
    while not (data_dir / "restore-begun").exists():
        assert time.monotonic() < deadline and runs[0].poll() is None, runs[0].communicate()
        time.sleep(0.05)
    runs.append(subprocess.Popen([sys.executable, "-m", "ferrohsm", *args], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    srv = start(tmp_path, "sqlite", target)  # waits for the restore, then serves what it wrote
    try:
        ended = sorted((run.wait(120), run.communicate()[1]) for run in runs)
        assert [code for code, _ in ended] == [0, 1], ended
        assert ("restore needs an empty data directory" in ended[1][1]
                or "in use by a running server" in ended[1][1]), ended  # after the server
        assert "interrupted" not in ended[0][1] + ended[1][1], ended
        assert "ferrohsm: waiting: a server is starting on" in ended[1][1], ended  # not silent
        assert not list(data_dir.glob("audit.interrupted-*"))
        check_everything_works(srv, source)
    finally:
        srv.close()


KILLER = """
import os, signal, sys
from ferrohsm.custody import restore as r

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def after(fn, count=1):
    calls = []
    def wrapped(*a, **kw):
        out = fn(*a, **kw)
        calls.append(1)
        if len(calls) >= count:
            die()
        return out
    return wrapped

point = sys.argv[1]
if point == "after-marker":
    r.begin = after(r.begin)
elif point == "between-keys":
    r.BATCH = 1
    r._restore_batch = after(r._restore_batch, 2)
elif point == "before-done":
    r.finish = lambda store: die()
from ferrohsm.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["filesystem", "sqlite"])
@pytest.mark.parametrize("point", ["after-marker", "between-keys", "before-done"])
def test_kill_9_during_restore_never_serves_a_half_restored_store(
        source: Source, point: str, kind: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    target = same_tokens(source.secrets)
    data_dir = tmp_path / "data"
    env = {**os.environ, **env_of(target), "PYTHONPATH": str(ROOT)}
    env.pop("FERROHSM_BACKUP_KEY", None)
    killed = subprocess.run([sys.executable, "-c", KILLER, point,
                             *restore_args(source.archive, data_dir, kind)],
                            env=env, capture_output=True, timeout=120, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with pytest.raises(StartupRefused, match="interrupted restore"):
        start(tmp_path, kind, target)
    code, _, err = cli(restore_args(source.archive, data_dir, kind), env_of(target),
                       monkeypatch, capsys)
    assert code == 0 and "interrupted restore: starting over" in err, err
    kept = list(data_dir.glob("audit.interrupted-*"))  # the interrupted run's log, moved aside
    assert len(kept) == (0 if point == "after-marker" else 1)
    srv = start(tmp_path, kind, target)
    try:
        check_everything_works(srv, source)
    finally:
        srv.close()


@pytest.mark.slow
def test_online_backup_of_a_running_server_restores(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``ferrohsm backup --out`` asks the running server (POST /v1/sys/backup, Administrators
    only, audited as system.backup before the answer); the archive restores like an offline one."""
    s = new_secrets()
    src = Source(s, tmp_path / "src" / "data", tmp_path / "online.fhsmbak")
    (tmp_path / "src").mkdir()
    srv = LiveServer(tmp_path / "src", key_store="sqlite", config_text=POLICY, secrets_=s)
    try:
        populate(srv, src)
        client_env = {"FERROHSM_URL": f"https://127.0.0.1:{srv.port}",
                      "FERROHSM_CA_CERT": str(srv.pki.ca_cert)}
        code, _, err = cli(["backup", "--out", str(src.archive)],
                           {**client_env, "FERROHSM_TOKEN": srv.token("operator")},
                           monkeypatch, capsys)
        assert code == 1 and "forbidden" in err and not src.archive.exists(), err
        code, out, err = cli(["backup", "--out", str(src.archive)],
                             {**client_env, "FERROHSM_TOKEN": srv.token()}, monkeypatch, capsys)
        assert code == 0 and "4 key(s), 1 approval(s)" in out, err
        code, _, err = cli(["backup", "--out", str(tmp_path / "x"), "--data-dir", "d"],
                           client_env, monkeypatch, capsys)
        assert code == 2 and "only with --offline" in err
        # the flag's twin in the environment is said to be passed over (an outside tester)
        code, _, err = cli(["backup", "--out", str(tmp_path / "again.fhsmbak")],
                           {**client_env, "FERROHSM_TOKEN": srv.token(),
                            "FERROHSM_BACKUP_KEY": base64.b64encode(bytes(32)).decode()},
                           monkeypatch, capsys)
        assert code == 0 and "FERROHSM_BACKUP_KEY is not used by an online backup" in err
        status, _, page = srv.call("GET", "/v1/audit?limit=1000", role="auditor")
        assert status == 200
        outcomes = [(r["actor"], r["outcome"]) for r in page["records"]
                    if r["action"] == "system.backup"]
        assert outcomes == [("operator-user", "denied"), ("administrator-user", "success"),
                            ("administrator-user", "success")]
    finally:
        srv.close()
    assert stat.S_IMODE(src.archive.stat().st_mode) == 0o600
    target = same_tokens(s)
    code, _, err = cli(restore_args(src.archive, tmp_path / "dst" / "data", "filesystem"),
                       env_of(target), monkeypatch, capsys)
    assert code == 0, err
    restored = start(tmp_path / "dst", "filesystem", target)
    try:
        check_everything_works(restored, src)
    finally:
        restored.close()


def test_a_restored_key_later_lost_from_the_store_stops_start_up(
        source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``key.restore`` counts as a creation for the store-loss check: the checks bind restored
    data exactly as they bind created data."""
    target = new_secrets(source.secrets.master_key)
    code, _, err = cli(restore_args(source.archive, tmp_path / "data", "filesystem"),
                       env_of(target), monkeypatch, capsys)
    assert code == 0, err
    (tmp_path / "data" / "keys" / f"{source.key_ids[1]}.json").unlink()
    with pytest.raises(StartupRefused, match=source.key_ids[1]):
        start(tmp_path, "filesystem", target)


def _resealed(data: bytes, key_text: str, edit: Any, edit_header: Any = None) -> bytes:
    """The archive decrypted with the backup key, its body (and header) edited, sealed again:
    what a holder of a separate backup key (but not of the master key) could make."""
    from ferrohsm.crypto.archive import BackupKey
    from ferrohsm.custody import archive
    key = BackupKey.separate(base64.b64decode(key_text))
    got = archive.read(data, key)
    body = json.loads(json.dumps(got.body))
    edit(body)
    header = {k: v for k, v in got.header.items() if k not in ("format", "cipher", "backup_key")}
    if edit_header is not None:
        edit_header(header)
    return archive.write(header, body, key)


def _swap_macs(body: dict[str, Any]) -> None:
    first, second = (json.loads(r) for r in body["keys"][:2])
    first["mac"], second["mac"] = second["mac"], first["mac"]
    body["keys"][:2] = [json.dumps(r, separators=(",", ":")) for r in (first, second)]


def _swap_records(body: dict[str, Any]) -> None:
    """Two authentic records change places: each passes its own MAC, the set does not."""
    body["keys"][0], body["keys"][1] = body["keys"][1], body["keys"][0]


def _mix_in(body: dict[str, Any]) -> None:
    """An authentic record replaced by another authentic record of the same store."""
    body["keys"][0] = body["keys"][1]
    body["keys"][1], body["keys"][2] = body["keys"][2], body["keys"][0]


def _swap_sealed(body: dict[str, Any]) -> None:
    records = [json.loads(r) for r in body["keys"]]
    sealed = [r for r in records if r["record"]["versions"][0].get("sealed")]
    a, b = sealed[0]["record"]["versions"][0], sealed[1]["record"]["versions"][0]
    a["sealed"], b["sealed"] = b["sealed"], a["sealed"]
    body["keys"] = [json.dumps(r, separators=(",", ":")) for r in records]


def test_records_swapped_by_a_backup_key_holder_are_refused(
        source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The archive's own authentication is only as strong as the backup key; with a separate
    one, each record's MAC (under the master key) still stops an edited or swapped record."""
    separate = B(secrets.token_bytes(32))
    archive_path = tmp_path / "separate.fhsmbak"
    env = {**env_of(source.secrets), "FERROHSM_BACKUP_KEY": separate}
    assert cli(["backup", "--offline", "--data-dir", str(source.data_dir), "--key-store",
                "filesystem", "--out", str(archive_path)], env, monkeypatch, capsys)[0] == 0
    data = archive_path.read_bytes()
    target_env = {**env_of(new_secrets(source.secrets.master_key)),
                  "FERROHSM_BACKUP_KEY": separate}
    untouched = tmp_path / "untouched.fhsmbak"
    untouched.write_bytes(_resealed(data, separate, lambda body: None))
    for name, edit, expect in (("macs", _swap_macs, "fails its check"),
                               ("records", _swap_records, "record set fails its check"),
                               ("sealed", _swap_sealed, "fails its check"),
                               ("mixed", _mix_in, "do not match its header")):
        path = tmp_path / f"{name}.fhsmbak"
        path.write_bytes(_resealed(data, separate, edit))
        _refused(path, tmp_path, target_env, monkeypatch, capsys, expect)
    code, _, err = cli(restore_args(untouched, tmp_path / "ok", "sqlite"), target_env,
                       monkeypatch, capsys)
    assert code == 0, err  # the re-sealing itself is sound: only the edits are refused


def _separate_archive(source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]
                      ) -> tuple[bytes, str, Secrets, dict[str, str]]:
    """An offline archive of the source under a separate backup key (which its holder can
    open and re-seal), that key, a restore target's secrets and environment."""
    separate = B(secrets.token_bytes(32))
    path = tmp_path / "separate.fhsmbak"
    env = {**env_of(source.secrets), "FERROHSM_BACKUP_KEY": separate}
    assert cli(["backup", "--offline", "--data-dir", str(source.data_dir), "--key-store",
                "filesystem", "--out", str(path)], env, monkeypatch, capsys)[0] == 0
    target = same_tokens(source.secrets)
    return path.read_bytes(), separate, target, {**env_of(target),
                                                 "FERROHSM_BACKUP_KEY": separate}


def _drop_revocations(body: dict[str, Any]) -> None:
    del body["revoked_tokens"]


def _drop_revoked_count(header: dict[str, Any]) -> None:
    del header["revoked_token_count"]


def test_revocations_edited_by_a_backup_key_holder_are_refused(
        source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The revoked tokens are bound by the contents MAC like the key records: a holder of a
    separate backup key cannot drop them (the member, or the member and its count: an archive
    of an older build then, whose MAC covered neither), empty them, or add one unseen."""
    data, separate, _, target_env = _separate_archive(source, tmp_path, monkeypatch, capsys)
    body = archive_body(data, separate)
    assert list(body["revoked_tokens"]) == ["leaked-before-backup"]

    def emptied(header: dict[str, Any]) -> None:
        header["revoked_token_count"] = 0

    def added(b: dict[str, Any]) -> None:
        b["revoked_tokens"]["another"] = 4_000_000_000.0

    def counted_two(header: dict[str, Any]) -> None:
        header["revoked_token_count"] = 2

    def shortened(b: dict[str, Any]) -> None:
        b["revoked_tokens"]["leaked-before-backup"] = 1.0

    for name, edit, edit_header, expect in (
            ("dropped", _drop_revocations, None, "token revocations are not valid"),
            ("dropped-both", _drop_revocations, _drop_revoked_count, "record set fails"),
            ("emptied", lambda b: b["revoked_tokens"].clear(), emptied, "record set fails"),
            ("added", added, counted_two, "record set fails"),
            ("shortened", shortened, None, "record set fails"),
            ("added-member", lambda b: None, _drop_revoked_count, "do not match its header")):
        path = tmp_path / f"{name}.fhsmbak"
        path.write_bytes(_resealed(data, separate, edit, edit_header))
        _refused(path, tmp_path, target_env, monkeypatch, capsys, expect)


def test_an_offline_backup_carries_the_logs_revocations_when_the_deny_list_was_lost(
        source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``serve`` puts the audit log's revocations back on a deny-list file lost while it was
    stopped; an offline backup of the stopped server carries them as well."""
    copy = Source(source.secrets, tmp_path / "copy", source.archive)
    shutil.copytree(source.data_dir, copy.data_dir)
    (copy.data_dir / "revoked-tokens.json").unlink()
    data, separate, _, _ = _separate_archive(copy, tmp_path, monkeypatch, capsys)
    assert list(archive_body(data, separate)["revoked_tokens"]) == ["leaked-before-backup"]


def archive_body(data: bytes, key_text: str) -> dict[str, Any]:
    from ferrohsm.crypto.archive import BackupKey
    from ferrohsm.custody import archive
    return archive.read(data, BackupKey.separate(base64.b64decode(key_text))).body


def _old_binding(master: bytes, header: dict[str, Any], body: dict[str, Any]) -> str:
    """snapshot.contents_mac as the builds before revocations were carried computed it."""
    from ferrohsm.crypto.recordmac import RecordMac
    from ferrohsm.custody import archive
    covered = {"header": {k: header.get(k) for k in ("created_at", "source_store", "key_count",
                                                     "approval_count", "audit_head",
                                                     "check_value")},
               **{k: body.get(k) for k in ("keys", "meta", "approvals", "audit_head")}}
    return RecordMac.derive(master).tag(b"ferrohsm backup contents v1",
                                        archive.canonical(covered)).hex()


def test_an_archive_of_an_older_build_without_revocations_still_restores(
        source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Archives written before revocations were carried (no member, no count, their MAC over
    the rest) verify and restore as before: with no revocation, and the restore says so."""
    data, separate, target, target_env = _separate_archive(source, tmp_path, monkeypatch,
                                                           capsys)

    def old(body: dict[str, Any]) -> None:
        del body["revoked_tokens"]
        header = json.loads(data.split(b"\n", 2)[1])
        del header["revoked_token_count"]
        body["binding"] = _old_binding(source.secrets.master_key, header, body)

    older = tmp_path / "older.fhsmbak"
    older.write_bytes(_resealed(data, separate, old, _drop_revoked_count))
    code, out, err = cli(restore_args(older, tmp_path / "data", "sqlite"), target_env,
                         monkeypatch, capsys)
    assert code == 0, err
    assert "4 key(s), 1 approval(s) and 0 token revocation(s)" in out
    assert "carries NO token revocations" in out  # not "only those revoked after it"
    srv = start(tmp_path, "sqlite", target)
    try:
        assert srv.call("GET", "/v1/keys", token=source.revoked_token)[0] == 200  # as before
        assert srv.call("GET", "/v1/keys", role="auditor")[0] == 200
    finally:
        srv.close()


def test_an_offline_backup_of_a_running_sqlite_server_is_refused_as_such(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite takes no lock an offline reader would meet: without this check the backup read a
    store mid-change and reported unexplained records as if they had been tampered with."""
    s = new_secrets()
    srv = LiveServer(tmp_path / "live", key_store="sqlite", secrets_=s)
    try:
        code, _, err = cli(["backup", "--offline", "--data-dir", str(srv.data_dir), "--key-store",
                            "sqlite", "--out", str(tmp_path / "x.fhsmbak")], env_of(s),
                           monkeypatch, capsys)
        assert code == 1 and "is in use by a running server" in err, err
        assert "without --offline" in err and "--accept-unrecorded" not in err
        assert not (tmp_path / "x.fhsmbak").exists()
        second = LiveServer(tmp_path / "live", key_store="sqlite", secrets_=s)  # a 2nd node
        second.close()  # (the check is the backup's: serving beside a live node goes on)
    finally:
        srv.close()
    code, _, err = cli(["backup", "--offline", "--data-dir", str(srv.data_dir), "--key-store",
                        "sqlite", "--out", str(tmp_path / "x.fhsmbak")], env_of(s), monkeypatch,
                       capsys)
    assert code == 0, err  # stopped: backed up
