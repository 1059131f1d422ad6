"""Approvers who cannot be forged, in parts: the signed vote message (its exact bytes), the vote
rules (who may vote, with what proof), signed votes kept in approval records, the approver keys
file and its reloads, the verifying algorithm on the Principal, and the offline vote checker on
the standard library alone."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ferrohsm.audit import votecheck
from ferrohsm.auth.approverkeys import ApproverKeys, parse_approver_keys
from ferrohsm.auth.authn import Authenticator, issue_token
from ferrohsm.auth.keysets import KeysetError, KeysetSources, ReloadingKeySet
from ferrohsm.config import load_config
from ferrohsm.control.voting import VoteRules
from ferrohsm.crypto.votesig import load_public_key, sign_vote
from ferrohsm.domain import approval as apv
from ferrohsm.domain.errors import BadRequest, ConfigError, Forbidden
from ferrohsm.domain.model import Principal, Role
from ferrohsm.domain.votes import fingerprint, vote_message

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
APPROVAL_ID = "01890a5d-ac96-774b-bcce-b302099a8057"
KEY_ID = "01890a5d-ac96-774b-bcce-b302099a8058"


def public_pem(key: Any) -> str:
    return key.public_key().public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def private_pem(key: Any) -> bytes:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def keys_toml(**keys: Any) -> str:
    return "[approvers]\n" + "".join(f'"{name}" = """\n{public_pem(key)}"""\n'
                                     for name, key in keys.items())


def pending() -> apv.Approval:
    return apv.new_approval(approval_id=APPROVAL_ID, action="key.destroy", key_id=KEY_ID,
                            args={}, salt=bytes(16), requester="root", required=2, now=NOW,
                            expires_at=NOW + timedelta(hours=1))


ALICE_KEY, CAROL_KEY = Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1())
KEYS = parse_approver_keys(keys_toml(alice=ALICE_KEY, carol=CAROL_KEY).encode(), "test")
ALICE = Principal("alice", Role.ADMINISTRATOR, signed_with="ES256")
SIGNED = VoteRules(True, True, lambda: KEYS)


def signature(key: Any, approval: apv.Approval, approve: bool = True) -> str:
    return sign_vote(private_pem(key), vote_message(approval.id, approval.request_hash,
                                                    approve))[0]


# ---- the message ------------------------------------------------------------------------------

def test_the_signed_message_is_exactly_this() -> None:
    assert vote_message(APPROVAL_ID, "ab" * 32, True) == (
        b"ferrohsm-vote-v1\napproval:01890a5d-ac96-774b-bcce-b302099a8057\n"
        b"request:" + b"ab" * 32 + b"\ndecision:approve\n")
    assert vote_message(APPROVAL_ID, "ab" * 32, False).endswith(b"decision:deny\n")
    with pytest.raises(ValueError):
        vote_message("x\nrequest:", "ab" * 32, True)  # no field can smuggle in a line
    assert votecheck.vote_message(APPROVAL_ID, "cd" * 32, False) == \
        vote_message(APPROVAL_ID, "cd" * 32, False)  # the offline copy says the same


def test_fingerprints_are_of_the_der_public_key() -> None:
    der = ALICE_KEY.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    assert KEYS["alice"].fingerprint == fingerprint(der) and fingerprint(der).startswith("sha256:")


# ---- the rules --------------------------------------------------------------------------------

@pytest.mark.parametrize("alg,required,allowed", [
    ("HS256", True, False), (None, True, False), ("RS256", True, True), ("PS256", True, True),
    ("ES256", True, True), ("ES384", True, True), ("HS256", False, True)])
def test_who_may_vote(alg: str | None, required: bool, allowed: bool) -> None:
    rules = VoteRules(require_asymmetric_tokens=required)
    voter = Principal("v", Role.OPERATOR, signed_with=alg)
    if allowed:
        rules.check_token(voter)
    else:
        with pytest.raises(Forbidden, match="require_asymmetric_tokens"):
            rules.check_token(voter)


def test_a_good_signature_gives_the_proof() -> None:
    approval = pending()
    for name, key in (("alice", ALICE_KEY), ("carol", CAROL_KEY)):
        voter = Principal(name, Role.ADMINISTRATOR, signed_with="RS256")
        proof = SIGNED.check_signature(voter, approval, True, signature(key, approval))
        assert proof is not None and proof.key_fingerprint == KEYS[name].fingerprint
        assert proof.details()["vote_message"] == vote_message(
            approval.id, approval.request_hash, True).decode()


@pytest.mark.parametrize("case", ["other decision", "other key", "other approval"])
def test_a_signature_for_anything_else_is_refused(case: str) -> None:
    approval = pending()
    other = apv.new_approval(approval_id=APPROVAL_ID.replace("57", "99"), action="key.destroy",
                             key_id=KEY_ID, args={}, salt=bytes(16), requester="root",
                             required=2, now=NOW, expires_at=NOW + timedelta(hours=1))
    made = {"other decision": signature(ALICE_KEY, approval, False),
            "other key": signature(Ed25519PrivateKey.generate(), approval),
            "other approval": signature(ALICE_KEY, other)}[case]
    with pytest.raises(Forbidden, match="does not verify"):
        SIGNED.check_signature(ALICE, approval, True, made)


def test_missing_unregistered_malformed_and_unconfigured() -> None:
    approval = pending()
    with pytest.raises(Forbidden, match="must be signed"):
        SIGNED.check_signature(ALICE, approval, True, None)
    assert VoteRules().check_signature(ALICE, approval, True, None) is None
    with pytest.raises(Forbidden, match="no public key is registered for bob"):
        SIGNED.check_signature(Principal("bob", Role.OPERATOR), approval, True,
                               signature(ALICE_KEY, approval))
    with pytest.raises(BadRequest):
        SIGNED.check_signature(ALICE, approval, True, "%%%")
    with pytest.raises(BadRequest, match="not set up"):
        VoteRules().check_signature(ALICE, approval, True, signature(ALICE_KEY, approval))


def test_signed_votes_survive_the_record_and_old_records_still_load() -> None:
    approval = apv.vote(pending(), ALICE, True, NOW, "ok", "c2ln", "sha256:ab")
    record = apv.to_record(approval)
    assert apv.from_record(json.loads(json.dumps(record))) == approval
    assert apv.view(approval, NOW)["approvals"][0]["key_fingerprint"] == "sha256:ab"
    unsigned = apv.to_record(apv.vote(pending(), ALICE, True, NOW))
    assert "signature" not in unsigned["votes"][0]  # as records always were
    assert apv.from_record(unsigned).votes[0].signature == ""


# ---- the keys file ----------------------------------------------------------------------------

def test_only_ed25519_and_p256_keys_are_accepted() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(KeysetError, match="Ed25519 or EC P-256"):
        parse_approver_keys(keys_toml(dave=rsa_key).encode(), "f")
    with pytest.raises(KeysetError, match="exactly one"):
        parse_approver_keys(b'[other]\nx = "y"\n', "f")
    with pytest.raises(KeysetError, match="PEM"):
        parse_approver_keys(b'[approvers]\nx = "not a key"\n', "f")
    with pytest.raises(ValueError, match="Ed25519 or EC P-256"):
        sign_vote(private_pem(rsa_key), b"m")


def test_the_keys_file_reloads_and_a_broken_one_is_kept_out(tmp_path: Path) -> None:
    path = tmp_path / "approvers.toml"
    path.write_text(keys_toml(alice=ALICE_KEY))
    events: list[tuple[str, str]] = []
    now = [0.0]
    keys = ApproverKeys(str(path), interval=1.0, clock=lambda: now[0],
                        on_event=lambda outcome, message: events.append((outcome, message)))
    assert set(keys.current()) == {"alice"}
    path.write_text(keys_toml(alice=ALICE_KEY, carol=CAROL_KEY))
    os.utime(path, ns=(1, 10**18))
    now[0] = 2.0
    assert set(keys.current()) == {"alice", "carol"}
    assert events[-1][0] == "success" and "added ['carol']" in events[-1][1]
    path.write_text("[approvers]\nalice = 'broken'\n")
    assert not keys.reload("test")
    assert set(keys.current()) == {"alice", "carol"} and events[-1][0] == "error"
    path.chmod(0o666)
    with pytest.raises(KeysetError, match="chmod go-w"):
        ApproverKeys(str(path))


def test_the_config_needs_the_keys_file_for_signatures(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[approvals]\nrequire_vote_signature = true\n")
    with pytest.raises(ConfigError, match="approver_keys_file"):
        load_config(str(path), env={})


# ---- the verifying algorithm on the Principal ---------------------------------------------------

def test_the_principal_names_the_algorithm_that_verified_its_token(tmp_path: Path) -> None:
    secret = b"s" * 32
    idp = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "idp.pem").write_text(public_pem(idp))
    keyset = ReloadingKeySet(KeysetSources(
        primary_secret=secret, public_key_files=(f"idp:ES256:{tmp_path / 'idp.pem'}",)),
        interval=-1)
    auth = Authenticator(issuer="ferrohsm", audience="ferrohsm", keyset=keyset)
    hs = auth.verify(issue_token(secret, subject="a", role="operator"))
    es = auth.verify(issue_token(idp, subject="b", role="operator", algorithm="ES256", kid="idp"))
    assert (hs.signed_with, es.signed_with) == ("HS256", "ES256")


# ---- the offline checker: standard library only -------------------------------------------------

def vote_record(actor: str, approval: apv.Approval, key: Any, approve: bool = True,
                **override: Any) -> dict[str, Any]:
    message = vote_message(approval.id, approval.request_hash, approve)
    signature, print_ = sign_vote(private_pem(key), message)
    details = {"approval_id": approval.id, "request_hash": approval.request_hash,
               "vote_signature": signature, "vote_key_fingerprint": print_,
               "vote_message": message.decode(), **override}
    return {"seq": 1, "actor": actor, "outcome": "success",
            "action": "approval.approved" if approve else "approval.denied", "details": details}


def test_the_offline_checker_verdicts(tmp_path: Path) -> None:
    path = tmp_path / "approvers.toml"
    path.write_text(keys_toml(alice=ALICE_KEY, carol=CAROL_KEY))
    keys = votecheck.load_keys(str(path))
    approval = pending()
    good = vote_record("alice", approval, ALICE_KEY)
    forged = vote_record("alice", approval, ALICE_KEY,
                         vote_signature=base64.b64encode(bytes(64)).decode())
    records = [good, forged, vote_record("eve", approval, ALICE_KEY),
               vote_record("alice", approval, CAROL_KEY),           # another key's fingerprint
               {**good, "action": "approval.denied"},                # the decision changed
               vote_record("carol", approval, CAROL_KEY, approve=False),
               {"actor": "bob", "outcome": "success", "action": "approval.approved",
                "details": {"approval_id": approval.id}},
               {**good, "outcome": "intent"}, None]
    verdicts = [r["verdict"] for r in votecheck.check_votes(records, keys)]
    assert verdicts == ["ok", "bad_signature", "unregistered", "key_mismatch",
                        "message_mismatch", "unchecked", "unsigned"]

    def ecdsa(pem: bytes, sig: str, message: bytes) -> bool:
        return load_public_key(pem, "k").verify(sig, message)
    assert votecheck.check_votes(records[5:6], keys, ecdsa)[0]["verdict"] == "ok"
    export = tmp_path / "votes.jsonl"
    export.write_text(json.dumps(good) + "\n" + json.dumps(records[6]) + "\n")
    assert votecheck.main([str(export), "--approver-keys", str(path)]) == 0
    assert votecheck.main([str(export), "--approver-keys", str(path),
                           "--require-signatures"]) == 1
    assert votecheck.main([str(export), "--approver-keys", str(tmp_path / "none")]) == 2


def test_p256_signatures_are_der_ecdsa_sha256() -> None:
    message = b"m"
    signature, _ = sign_vote(private_pem(CAROL_KEY), message)
    CAROL_KEY.public_key().verify(base64.b64decode(signature), message,
                                  ec.ECDSA(hashes.SHA256()))


def test_a_broken_keys_file_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    from ferrohsm.app import approver_keys
    keys = tmp_path / "approvers.toml"
    keys.write_text("[approvers]\nalice = 'no key here'\n")
    path = tmp_path / "c.toml"
    path.write_text(f'[approvals]\nrequire_vote_signature = true\napprover_keys_file = "{keys}"\n')
    with pytest.raises(ConfigError, match=r"approver_keys_file.*alice"):
        approver_keys(load_config(str(path), env={}))
