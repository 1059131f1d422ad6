"""Custody pieces without a server: share text, custodian encryption (X25519 ECIES and
RSA-OAEP-SHA256, the second also opened by openssl), the unsealer's progress and resets, the
custody file's MACs, and the rekey journal giving both keys to a holder of either."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519

from ferrohsm import app
from ferrohsm.crypto.custodian import decrypt_share, encrypt_share, recipient_kind
from ferrohsm.custody import rekey, state
from ferrohsm.custody.shares import Share, parse_share
from ferrohsm.custody.unsealer import Unsealer, WrongShares
from ferrohsm.domain.errors import BadRequest, ConfigError, Conflict


def pem_pair(private: object) -> tuple[bytes, bytes]:
    priv = private.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    pub = private.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return priv, pub


def test_share_text_round_trip_and_refusals_never_quote_it() -> None:
    share = Share("0a1b2c3d", 7, os.urandom(32))
    assert parse_share(share.text()) == share
    assert parse_share(f"  {share.text()}\n") == share
    assert share.y.hex() not in repr(share)
    secret_looking = "fhsm1-0a1b2c3d-999-" + "A" * 43
    for bad in ("", "nonsense", secret_looking, share.text().replace("fhsm1", "fhsm2"), 42):
        with pytest.raises(BadRequest) as err:
            parse_share(bad)
        assert "AAAA" not in err.value.message


@pytest.mark.parametrize("kind", ["x25519", "rsa"])
def test_custodian_encryption_opens_only_with_the_private_key(kind: str) -> None:
    make = (x25519.X25519PrivateKey.generate if kind == "x25519"
            else lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))
    priv, pub = pem_pair(make())
    other_priv, _ = pem_pair(make())
    assert recipient_kind(pub) == kind
    blob = encrypt_share(pub, b"fhsm1-secret")
    assert b"fhsm1" not in blob
    assert decrypt_share(priv, blob) == b"fhsm1-secret"
    with pytest.raises(ValueError, match="cannot be opened"):
        decrypt_share(other_priv, blob)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(ValueError, match="cannot be opened"):
        decrypt_share(priv, tampered)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_rsa_share_opens_with_openssl_oaep_sha256(tmp_path: Path) -> None:
    priv, pub = pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=3072))
    (tmp_path / "k.pem").write_bytes(priv)
    (tmp_path / "blob").write_bytes(encrypt_share(pub, b"fhsm1-abc")[1:])
    out = subprocess.run(["openssl", "pkeyutl", "-decrypt", "-inkey", str(tmp_path / "k.pem"),
                          "-in", str(tmp_path / "blob"), "-pkeyopt", "rsa_padding_mode:oaep",
                          "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256"],
                         capture_output=True, check=True)
    assert out.stdout == b"fhsm1-abc"


def test_other_custodian_keys_are_refused() -> None:
    _, ec_pub = pem_pair(ec.generate_private_key(ec.SECP256R1()))
    _, small = pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=1024))  # noqa: S505  refused on purpose
    with pytest.raises(ValueError, match="X25519 or RSA"):
        recipient_kind(ec_pub)
    with pytest.raises(ValueError, match="2048"):
        recipient_kind(small)
    with pytest.raises(ValueError, match="PEM"):
        recipient_kind(b"not a key")


@pytest.mark.parametrize("committed", [True, False], ids=["commitments", "older-file"])
def test_unsealer_counts_resets_on_a_wrong_set_and_opens_on_a_right_one(committed: bool) -> None:
    """A wrong share is refused alone where the custody file holds the shares' commitments
    (a forged one cannot reset the custodians' progress); a file made before them still
    finds it when the set fails the check value, and starts again."""
    master = os.urandom(32)
    split, shares = state.new_split(master, 5, 3)
    assert len(split.commitments) == 5
    if not committed:
        split = replace(split, commitments=())
    custody = state.CustodyFile(split).signed({split.split_id: master})
    unsealer = Unsealer(custody)
    assert unsealer.submit(shares[0]) == (unsealer.progress(), None)
    with pytest.raises(BadRequest, match="already submitted"):
        unsealer.submit(shares[0])
    with pytest.raises(BadRequest, match="belongs to split") as foreign:
        unsealer.submit(Share("ffffffff", 2, shares[1].y))
    assert split.split_id not in foreign.value.message  # never told to whoever submits
    assert unsealer.progress().submitted == 1
    unsealer.submit(shares[1])
    wrong = Share(split.split_id, 3, bytes(b ^ 1 for b in shares[2].y))
    if committed:
        with pytest.raises(BadRequest, match="not share 3"):
            unsealer.submit(wrong)
        assert unsealer.progress().submitted == 2
        unsealer.reset()  # (then as the older file's case, from nothing)
    else:
        with pytest.raises(WrongShares):
            unsealer.submit(wrong)
        assert unsealer.progress().submitted == 0
    for share in (shares[4], shares[2]):
        assert unsealer.submit(share)[1] is None
    progress, opened = unsealer.submit(shares[3])
    assert opened == master and progress.submitted == 3
    # a share arriving while the service opens is refused, not kept as progress
    with pytest.raises(Conflict, match="threshold was reached"):
        unsealer.submit(shares[0])
    assert unsealer.progress().submitted == 0
    unsealer.reset()  # sealed again (or the opening failed): shares are taken again
    assert unsealer.submit(shares[0])[0].submitted == 1


def test_a_sealed_server_takes_the_shares_an_offline_rekey_promoted_meanwhile(
        tmp_path: Path) -> None:
    """A sealed server holds no lock, so an offline rekey can run beside it: its custodians'
    new shares were "from before a rekey" until a restart (an outside tester). The custody
    file is read again when a share names a split the loaded one does not know."""
    old_master, new_master = os.urandom(32), os.urandom(32)
    old_split, old_shares = state.new_split(old_master, 3, 2)
    state.save(tmp_path, state.CustodyFile(old_split).signed({old_split.split_id: old_master}))
    unsealer = Unsealer(state.load(tmp_path), lambda: state.load(tmp_path))
    unsealer.submit(old_shares[0])
    with pytest.raises(BadRequest, match="belongs to split"):  # not in the file either
        unsealer.submit(Share("ffffffff", 2, old_shares[1].y))
    assert unsealer.progress().submitted == 1
    new_split, new_shares = state.new_split(new_master, 3, 2)  # the rekey's promotion
    state.save(tmp_path, state.CustodyFile(new_split).signed({new_split.split_id: new_master}))
    assert unsealer.submit(new_shares[2])[0].submitted == 1  # the old progress is dropped
    assert unsealer.submit(new_shares[0])[1] == new_master


def test_an_edited_custody_file_fails_its_mac(tmp_path: Path) -> None:
    master = os.urandom(32)
    split, shares = state.new_split(master, 3, 2)
    state.save(tmp_path, state.CustodyFile(split).signed({split.split_id: master}))
    assert (tmp_path / state.FILE_NAME).stat().st_mode & 0o777 == 0o600
    loaded = state.load(tmp_path)
    assert loaded.mac_ok(split.split_id, master)
    edited = state.CustodyFile(state.Split(split.split_id, 4, 2, split.check), None, loaded.macs)
    assert not edited.mac_ok(split.split_id, master)
    unsealer = Unsealer(edited)
    unsealer.submit(shares[0])
    with pytest.raises(WrongShares):
        unsealer.submit(shares[1])
    (tmp_path / state.FILE_NAME).write_text("{}")
    with pytest.raises(ConfigError, match="not a valid"):
        state.load(tmp_path)


def test_the_journal_gives_both_keys_to_a_holder_of_either() -> None:
    keys = rekey.MasterKeys(os.urandom(32), os.urandom(32))
    blob = keys.journal()
    assert keys.old not in blob and keys.new not in blob
    assert rekey.MasterKeys.from_journal(blob, keys.old) == keys
    assert rekey.MasterKeys.from_journal(blob, keys.new) == keys
    with pytest.raises(ConfigError, match="neither"):
        rekey.MasterKeys.from_journal(blob, os.urandom(32))
    assert "old=" not in repr(keys) or keys.old.hex() not in repr(keys)


def test_the_check_value_name_is_the_one_app_uses() -> None:
    assert rekey.CHECK_VALUE == app.CHECK_VALUE


SHARE_TEXT = "fhsm1-0123abcd-2-o18LK5dKeXYuOLvmq9dKkiJzOOV8"


@pytest.mark.parametrize("raw", [
    b"\xef\xbb\xbf" + SHARE_TEXT.encode() + b"\r\n",  # Notepad's UTF-8: a BOM and CRLF
    SHARE_TEXT.encode() + b"\r\n",
    "\ufeff".encode("utf-16-le") + (SHARE_TEXT + "\r\n").encode("utf-16-le"),  # "Unicode"
    "\ufeff".encode("utf-16-be") + SHARE_TEXT.encode("utf-16-be"),
], ids=["utf8-bom-crlf", "crlf", "utf16-le", "utf16-be"])
def test_share_files_as_windows_tools_save_them_are_read(tmp_path: Path, raw: bytes) -> None:
    """They were "cannot read --share-file", which sends a custodian to the permissions."""
    from ferrohsm.cli.custody import read_share_text
    path = tmp_path / "share.txt"
    path.write_bytes(raw)
    assert read_share_text(str(path), None) == SHARE_TEXT
    assert parse_share(read_share_text(str(path), None)).x == 2


@pytest.mark.parametrize(("raw", "said"), [
    (SHARE_TEXT.encode("utf-16-le"), "is not ASCII text (UTF-16 without a byte-order mark?)"),
    (SHARE_TEXT.encode() + b"\xe9", "is not ASCII text: a share is"),
    ((SHARE_TEXT + "é").encode(), "is not ASCII text: a share is"),
], ids=["utf16-no-bom", "latin1", "utf8-non-ascii"])
def test_a_share_file_that_is_not_ascii_is_said_so_without_its_content(
        tmp_path: Path, raw: bytes, said: str) -> None:
    from ferrohsm.cli.custody import read_share_text
    path = tmp_path / "share.txt"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as refused:
        read_share_text(str(path), None)
    assert f"--share-file {path} {said}" in refused.value.message
    assert "o18LK" not in refused.value.message and "cannot read" not in refused.value.message


def test_a_share_file_others_may_read_is_warned_about(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Like a token file (not refused: a USB stick's FAT shows every file 0755); it was used
    without a word (an outside tester)."""
    from ferrohsm.cli.custody import read_share_text
    path = tmp_path / "share.txt"
    path.write_text(SHARE_TEXT)
    path.chmod(0o600)
    assert read_share_text(str(path), None) == SHARE_TEXT
    assert capsys.readouterr().err == ""
    path.chmod(0o644)
    assert read_share_text(str(path), None) == SHARE_TEXT
    err = capsys.readouterr().err
    assert f"the share file {path} can be read by other users (mode 0644)" in err
    assert SHARE_TEXT not in err


def test_an_unreadable_share_file_says_why(tmp_path: Path) -> None:
    from ferrohsm.cli.custody import read_share_text
    with pytest.raises(ConfigError, match=r"cannot read --share-file .*: No such file"):
        read_share_text(str(tmp_path / "missing"), None)


class _Records:
    """The sealed-phase audit sink, as a list."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def append(self, event: Any) -> None:
        self.events.append(event)

    def write_queued(self) -> None: ...
    def commits_in_write(self) -> bool: return False
    def is_durable(self, ticket: Any) -> bool: return True
    def wait(self, ticket: Any) -> None: ...
    def close(self) -> None: ...


def test_every_refused_unseal_share_is_audited_denied() -> None:
    """A refusal of the caller's share is ``denied`` whatever the reason: a foreign split, a
    number outside the split or a repeat were ``error`` (the server's own failures), a
    malformed one ``denied``."""
    import base64
    import json

    from ferrohsm.api.http import Headers, Request
    from ferrohsm.custody.gate import UNSEAL_PATH, SealGate
    master = os.urandom(32)
    split, shares = state.new_split(master, 3, 2)
    records = _Records()

    def no_runtime(master: bytes) -> Any:
        raise AssertionError("no threshold is reached here")
    gate = SealGate(Unsealer(state.CustodyFile(split).signed({split.split_id: master})),
                    open_sink=lambda: records, open_runtime=no_runtime,
                    close_runtime=lambda rt: None, version="test")
    value = base64.urlsafe_b64encode(bytes(32)).decode().rstrip("=")
    for n, text in enumerate(["not a share",                       # malformed
                              f"fhsm1-00000000-1-{value}",          # another split
                              f"fhsm1-{split.split_id}-9-{value}",  # outside the split's 3
                              shares[0].text(), shares[0].text()]):  # the second a repeat
        body = json.dumps({"share": text}).encode()
        answer = gate(Request("POST", UNSEAL_PATH, UNSEAL_PATH, {}, Headers(), body,
                              "127.0.0.1", n, None, f"r{n}", 0.0))
        assert answer.status == (200 if n == 3 else 400)
    outcomes = [(e.action, e.outcome) for e in records.events]
    assert outcomes == [("system.unseal", "denied")] * 3 + [("system.unseal", "success"),
                                                            ("system.unseal", "denied")]
    # a repeated member is refused, as in every other body (last-wins once counted share 2)
    twice = f'{{"share":"not-a-share","share":"{shares[1].text()}"}}'.encode()
    answer = gate(Request("POST", UNSEAL_PATH, UNSEAL_PATH, {}, Headers(), twice,
                          "127.0.0.1", 9, None, "r9", 0.0))
    assert answer.status == 400 and b"each member once" in answer.body
    assert [(e.action, e.outcome) for e in records.events][-1] == ("system.unseal", "denied")


def _no_runtime(master: bytes) -> Any:
    raise AssertionError("no share is given here")


def test_the_unseal_limit_counts_per_client_and_survives_a_flood_of_addresses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A client over its budget stays limited while thousands of other addresses try (the
    table was cleared whole at 10,000 addresses, everyone's count with it); one IPv6 /64 is
    one client."""
    from ferrohsm.custody import gate as gate_module
    from ferrohsm.custody.gate import UNSEAL_PER_MINUTE, SealGate
    from ferrohsm.domain.errors import RateLimited
    monkeypatch.setattr(gate_module, "TRACKED_CLIENTS", 50)
    split, _ = state.new_split(os.urandom(32), 3, 2)
    gate = SealGate(Unsealer(state.CustodyFile(split).signed({split.split_id: bytes(32)})),
                    open_sink=_Records, open_runtime=_no_runtime,
                    close_runtime=lambda rt: None, version="test")
    for n in range(UNSEAL_PER_MINUTE):
        gate._limit(f"2001:db8::{n:x}")  # twenty addresses of one /64: one client's tries
    with pytest.raises(RateLimited):
        gate._limit("2001:db8::ffff")
    for n in range(1000):  # a flood from fresh addresses, each heard once
        gate._limit(f"10.0.{n // 250}.{n % 250}")
        if n % 100 == 0:
            with pytest.raises(RateLimited):  # the limited client is heard again: still so
                gate._limit("2001:db8::1")
    assert len(gate._tries) <= 50
    gate._limit("2001:db9::1")  # another /64 is another client


def test_commitments_are_kept_bound_by_the_mac_and_checked_when_read(tmp_path: Path) -> None:
    master = os.urandom(32)
    split, shares = state.new_split(master, 3, 2)
    assert all(split.holds(s) for s in shares)
    assert split.holds(Share(split.split_id, 1, shares[1].y)) is False  # another's value
    state.save(tmp_path, state.CustodyFile(split).signed({split.split_id: master}))
    loaded = state.load(tmp_path)
    assert loaded.current.commitments == split.commitments
    assert loaded.mac_ok(split.split_id, master)
    assert json.loads(state.CustodyFile(split).body())["format"] == 2  # older builds refuse it
    older = replace(split, commitments=())  # a file made before commitments: no "commitments"
    assert "commitments" not in state.CustodyFile(older).body().decode()
    assert json.loads(state.CustodyFile(older).body())["format"] == 1  # its MAC unchanged
    assert older.holds(shares[0]) is None
    path = tmp_path / state.FILE_NAME
    doc = json.loads(path.read_text())
    doc["format"] = 1  # commitments under format 1, which promises none
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="not a valid FerroHSM custody file"):
        state.load(tmp_path)
    doc["format"] = 2
    for bad in (split.commitments[:2], ["x" * 64] * 3, [c.upper() for c in split.commitments]):
        doc["current"]["commitments"] = list(bad)
        path.write_text(json.dumps(doc))
        with pytest.raises(ConfigError, match="not a valid FerroHSM custody file"):
            state.load(tmp_path)


def test_the_gate_hands_a_written_answer_to_the_unsealed_runtime() -> None:
    """Behind the seal gate (split knowledge), an answer of the event loop is logged and
    counted by the runtime's application when it is written (``finished``): without it, an
    unsealed server's loop requests had no access line and no metrics."""
    from types import SimpleNamespace

    from ferrohsm.custody.gate import SealGate
    master = os.urandom(32)
    split, _ = state.new_split(master, 3, 2)
    def no_runtime(master: bytes) -> Any:
        raise AssertionError("nothing is unsealed here")
    gate = SealGate(Unsealer(state.CustodyFile(split).signed({split.split_id: master})),
                    open_sink=_Records, open_runtime=no_runtime,
                    close_runtime=lambda rt: None, version="test")
    seen: list[tuple[Any, Any, float]] = []
    gate.finished("request", "answer", 0.5)  # type: ignore[arg-type]  # sealed: nothing to do
    gate._rt = SimpleNamespace(app=SimpleNamespace(  # as an unseal leaves it
        finished=lambda req, resp, seconds: seen.append((req, resp, seconds))))
    gate.finished("request", "answer", 0.5)  # type: ignore[arg-type]
    assert seen == [("request", "answer", 0.5)]
