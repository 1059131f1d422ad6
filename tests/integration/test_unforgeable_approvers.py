"""Approvers who cannot be forged, through REST and the CLI against a live TLS server:
``[approvals].require_asymmetric_tokens`` refuses votes carried by HS256 tokens (approve and
deny, audited), ``require_vote_signature`` refuses unsigned and wrongly signed votes and records
the proof of the good ones; ``ferrohsm approvals approve --signing-key`` signs locally; and
``ferrohsm audit verify-votes`` checks an export offline, catching a tampered signature or vote."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from live import LiveServer

from ferrohsm.auth.authn import issue_token
from ferrohsm.cli.main import main
from ferrohsm.domain.votes import vote_message

Private = Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def pem_private(key: Private) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def pem_public(key: Private) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@dataclass
class World:
    live: LiveServer
    root: Path
    idp: ec.EllipticCurvePrivateKey           # the identity provider's token signing key
    keys: dict[str, Private]                  # each approver's own vote signing key
    keys_file: Path

    def token(self, subject: str, role: str = "administrator") -> str:
        """An identity-provider (ES256) token."""
        return issue_token(self.idp, subject=subject, role=role, algorithm="ES256", kid="idp")

    def key_file(self, subject: str) -> Path:
        path = self.root / f"{subject}.key"
        if not path.exists():
            path.write_bytes(pem_private(self.keys[subject]))
            path.chmod(0o600)
        return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("voters")
    idp = ec.generate_private_key(ec.SECP256R1())
    (root / "idp.pem").write_text(pem_public(idp))
    keys: dict[str, Private] = {"alice": Ed25519PrivateKey.generate(),
                                "carol": ec.generate_private_key(ec.SECP256R1()),
                                "dave": Ed25519PrivateKey.generate()}
    keys_file = root / "approvers.toml"
    keys_file.write_text("[approvers]\n" + "".join(
        f'{name} = """\n{pem_public(key)}"""\n' for name, key in keys.items()))
    config = f"""
[auth]
public_key_files = ["idp:ES256:{root / 'idp.pem'}"]

[approvals]
require_asymmetric_tokens = true
require_vote_signature = true
approver_keys_file = "{keys_file}"

[policy.tags.dual]
approvals_required = 2
"""
    live = LiveServer(root, config_text=config)
    yield World(live, root, idp, keys, keys_file)
    live.close()


def parked(w: World) -> dict[str, Any]:
    """A destroy parked for two approvals (requested with the HS256 administrator token)."""
    status, _, key = w.live.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                      "usage": "encrypt", "tags": ["dual"]})
    assert status == 201
    status, _, body = w.live.call("POST", f"/v1/keys/{key['id']}/destroy", {})
    assert status == 202, body
    return body["approval"]  # type: ignore[no-any-return]


def sign(key: Private, approval: dict[str, Any], approve: bool = True) -> str:
    message = vote_message(approval["id"], approval["request_hash"], approve)
    raw = key.sign(message) if isinstance(key, Ed25519PrivateKey) else \
        key.sign(message, ec.ECDSA(__import__("cryptography.hazmat.primitives.hashes",
                                              fromlist=["SHA256"]).SHA256()))
    return base64.b64encode(raw).decode()


def vote(w: World, approval: dict[str, Any], verb: str, token: str,
         body: dict[str, Any] | None = None) -> tuple[int, Any]:
    status, _, answer = w.live.call("POST", f"/v1/approvals/{approval['id']}/{verb}",
                                    body or {}, token=token)
    return status, answer


def refusals(w: World, approval: dict[str, Any]) -> list[dict[str, Any]]:
    """The refused votes on ``approval`` (recorded against the key it is bound to)."""
    return [r for r in w.live.rt.audit.read(0, 100000) if r["action"] == "approval.decide"
            and r["outcome"] in ("denied", "error") and r["key_id"] == approval["key_id"]]


# ---- REST -----------------------------------------------------------------------------------

@pytest.mark.parametrize("verb", ["approve", "deny"])
def test_hs256_tokens_cannot_vote(world: World, verb: str) -> None:
    approval = parked(world)
    hs256 = world.live.token("administrator", "alice")
    status, body = vote(world, approval, verb, hs256,
                        {"signature": sign(world.keys["alice"], approval, verb == "approve")})
    assert status == 403
    assert "require_asymmetric_tokens" in body["error"]["message"]
    assert "HS256" in body["error"]["message"]
    (record,) = refusals(world, approval)
    assert record["actor"] == "alice" and "identity provider" in record["message"]
    status, _, again = world.live.call("GET", f"/v1/approvals/{approval['id']}")
    assert again["approvals"] == [] and again["state"] == "pending"


def test_who_may_vote_is_said_before_whether_the_vote_is_signed(world: World) -> None:
    """Documentation tester: the requester, or an approver voting twice, heard "this vote must
    be signed" (403) instead of why no signature would help (403 requester, 409 twice)."""
    approval = parked(world)
    status, body = vote(world, approval, "approve", world.token(approval["requested_by"]))
    assert status == 403 and "requester" in body["error"]["message"], body
    alice = world.token("alice")
    status, _ = vote(world, approval, "approve", alice,
                     {"signature": sign(world.keys["alice"], approval)})
    assert status == 200
    status, body = vote(world, approval, "approve", alice)
    assert status == 409 and "already voted" in body["error"]["message"], body


def test_unsigned_and_wrongly_signed_votes_are_refused(world: World) -> None:
    approval = parked(world)
    alice = world.token("alice")
    status, body = vote(world, approval, "approve", alice)
    assert status == 403 and "must be signed" in body["error"]["message"]
    # signed by someone else's key, for the other decision, for another approval
    other = parked(world)
    for signature in (sign(world.keys["dave"], approval), sign(world.keys["alice"], approval,
                                                               False),
                      sign(world.keys["alice"], other)):
        status, body = vote(world, approval, "approve", alice, {"signature": signature})
        assert status == 403 and "does not verify" in body["error"]["message"], body
    status, body = vote(world, approval, "approve", alice, {"signature": "not base64!"})
    assert status == 400
    status, body = vote(world, approval, "approve", world.token("mallory"),
                        {"signature": sign(world.keys["alice"], approval)})
    assert status == 403 and "no public key is registered for mallory" in \
        body["error"]["message"]
    assert len(refusals(world, approval)) == 6
    status, _, state = world.live.call("GET", f"/v1/approvals/{approval['id']}")
    assert state["approvals"] == []


def test_a_signed_vote_counts_and_its_proof_is_recorded(world: World) -> None:
    approval = parked(world)
    signature = sign(world.keys["alice"], approval)
    status, body = vote(world, approval, "approve", world.token("alice"),
                        {"signature": signature, "comment": "ticket 7"})
    assert status == 200, body
    (ballot,) = body["approvals"]
    assert ballot["signature"] == signature and ballot["key_fingerprint"].startswith("sha256:")
    records = [r for r in world.live.rt.audit.read(0, 100000)
               if r["action"] == "approval.approved"
               and r["details"].get("approval_id") == approval["id"]]
    assert [r["outcome"] for r in records] == ["intent", "success"]
    details = records[-1]["details"]
    assert details["vote_signature"] == signature
    assert details["vote_key_fingerprint"] == ballot["key_fingerprint"]
    assert details["vote_message"] == vote_message(approval["id"], approval["request_hash"],
                                                   True).decode()
    assert details["request_hash"] == approval["request_hash"]


# ---- the CLI, and the offline check of an export ----------------------------------------------

def run(w: World, monkeypatch: pytest.MonkeyPatch, token: str, *argv: str) -> tuple[int, str,
                                                                                    str]:
    for name in list(os.environ):
        if name.startswith("FERROHSM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FERROHSM_URL", f"https://127.0.0.1:{w.live.port}")
    monkeypatch.setenv("FERROHSM_CA_CERT", str(w.live.pki.ca_cert))
    monkeypatch.setenv("FERROHSM_TOKEN", token)
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.multiple(sys, stdout=out, stderr=err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    assert "Traceback" not in err.getvalue()
    return code, out.getvalue(), err.getvalue()


def test_cli_signs_locally_and_verify_votes_checks_an_export(
        world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    approval = parked(world)
    for subject in ("alice", "carol"):  # Ed25519, then EC P-256
        code, out, err = run(world, monkeypatch, world.token(subject), "approvals", "approve",
                             approval["id"], "--signing-key", str(world.key_file(subject)))
        assert code == 0, err
        assert "signed the vote with key sha256:" in err
    admin = world.live.token("administrator")
    code, _, err = run(world, monkeypatch, admin, "keys", "destroy", approval["key_id"],
                       "--approval-id", approval["id"])
    assert code == 0, err
    export = tmp_path / "audit.jsonl"
    code, _, err = run(world, monkeypatch, admin, "audit", "export", "--out", str(export))
    assert code == 0, err
    keys = str(world.keys_file)
    code, out, err = run(world, monkeypatch, admin, "audit", "verify-votes", str(export),
                         "--approver-keys", keys, "--json")
    assert code == 0, out + err
    report = json.loads(out)
    mine = [r for r in report["votes"] if r["approval_id"] == approval["id"]]
    assert [(r["actor"], r["verdict"]) for r in mine] == [("alice", "ok"), ("carol", "ok")]
    assert report["failed"] == 0

    lines = export.read_bytes().splitlines()
    alice_vote = next(i for i, line in enumerate(lines) if b'"approval.approved"' in line
                      and approval["id"].encode() in line and b'"success"' in line)
    record = json.loads(lines[alice_vote])
    forged = sign(world.keys["dave"], approval)  # a signature by a key that is not alice's
    tampered = {**record, "details": {**record["details"], "vote_signature": forged}}
    changed = [*lines[:alice_vote], json.dumps(tampered).encode(), *lines[alice_vote + 1:]]
    (tmp_path / "forged.jsonl").write_bytes(b"\n".join(changed) + b"\n")
    code, out, _ = run(world, monkeypatch, admin, "audit", "verify-votes",
                       str(tmp_path / "forged.jsonl"), "--approver-keys", keys, "--json")
    assert code == 1
    verdicts = {r["actor"]: r["verdict"] for r in json.loads(out)["votes"]
                if r["approval_id"] == approval["id"]}
    assert verdicts == {"alice": "bad_signature", "carol": "ok"}
    # a vote turned into a denial: the recorded message no longer matches
    flipped = {**record, "action": "approval.denied"}
    changed = [*lines[:alice_vote], json.dumps(flipped).encode(), *lines[alice_vote + 1:]]
    (tmp_path / "flipped.jsonl").write_bytes(b"\n".join(changed) + b"\n")
    code, out, _ = run(world, monkeypatch, admin, "audit", "verify-votes",
                       str(tmp_path / "flipped.jsonl"), "--approver-keys", keys)
    assert code == 1 and "message_mismatch" in out


def test_cli_signs_a_denial(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    approval = parked(world)
    code, _, err = run(world, monkeypatch, world.token("dave"), "approvals", "deny",
                       approval["id"], "--signing-key", str(world.key_file("dave")),
                       "--comment", "not today")
    assert code == 0, err
    _, _, after = world.live.call("GET", f"/v1/approvals/{approval['id']}")
    assert after["state"] == "denied" and after["denied_by"]["actor"] == "dave"
    assert after["denied_by"]["signature"] == sign(world.keys["dave"], approval, False)
    # an approval signed as a denial does not count as an approval (and vice versa)
    other = parked(world)
    code, _, err = run(world, monkeypatch, world.token("dave"), "approvals", "approve",
                       other["id"], "--signing-key", str(world.key_file("alice")))
    assert code == 1 and "does not verify" in err


def test_cli_refuses_a_readable_or_missing_signing_key(
        world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    approval = parked(world)
    loose = tmp_path / "loose.key"
    loose.write_bytes(pem_private(world.keys["alice"]))
    loose.chmod(0o644)
    for path, words in ((loose, "chmod 600"), (tmp_path / "missing.key", "cannot read")):
        code, _, err = run(world, monkeypatch, world.token("alice"), "approvals", "approve",
                           approval["id"], "--signing-key", str(path))
        assert code == 2 and words in err, err
