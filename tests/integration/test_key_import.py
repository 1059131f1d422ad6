"""Key import (BYOK) end to end: a real server over TLS, material wrapped by the real `openssl`
command line (RSA-OAEP-SHA256 with `pkeyutl`, the RSA-AES-KWP hybrid with `pkeyutl` and
`enc -id-aes256-wrap-pad`), imported keys used and checked against openssl, refusals, roles,
audit records, dual control by tag, expiry and a restart within the 24 hours."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from live import LiveServer

from ferrohsm.config import Secrets
from ferrohsm.crypto.importwrap import read_material, wrap_for_import

pytestmark = pytest.mark.slow  # RSA-3072 wrapping keys: ~0.1-1 s each

CONFIG = """
[policy.tags.byok]
approvals_required = 1
approval_actions = ["import"]
approval_ttl_seconds = 3600
[policy.tags.rotated]
approvals_required = 1
approval_actions = ["rotate"]
"""
OAEP = ["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256",
        "-pkeyopt", "rsa_mgf1_md:sha256"]


def B(data: bytes) -> str:  # noqa: N802  one letter, like b"": a base64 literal in bodies
    return base64.b64encode(data).decode()


def openssl(*args: str | Path, data: bytes | None = None) -> bytes:
    done = subprocess.run(["openssl", *map(str, args)], input=data, capture_output=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("byok"), key_store="filesystem",
                        config_text=CONFIG)
    yield server
    server.close()


def new_job(srv: LiveServer, role: str = "operator") -> dict[str, Any]:
    status, _, job = srv.call("POST", "/v1/import-jobs", {}, role=role)
    assert status == 201, job
    return job  # type: ignore[no-any-return]  # parsed JSON


def oaep_with_openssl(tmp: Path, job: dict[str, Any], material: bytes) -> bytes:
    """`openssl pkeyutl -encrypt` with RSA-OAEP-SHA256 under the job's public key."""
    (tmp / "wrap.pem").write_text(job["public_key"])
    return openssl("pkeyutl", "-encrypt", "-pubin", "-inkey", tmp / "wrap.pem", *OAEP,
                   data=material)


def hybrid_with_openssl(tmp: Path, job: dict[str, Any], material: bytes) -> bytes:
    """RSA_AES_KEY_WRAP_SHA256 made with openssl alone: an ephemeral AES-256 key under
    RSA-OAEP-SHA256, then the material under that key with RFC 5649 (id-aes256-wrap-pad)."""
    ephemeral = openssl("rand", "32")
    (tmp / "material.der").write_bytes(material)
    kwp = openssl("enc", "-id-aes256-wrap-pad", "-K", ephemeral.hex(), "-iv", "A65959A6",
                  "-in", tmp / "material.der")
    return oaep_with_openssl(tmp, job, ephemeral) + kwp


def import_body(job: dict[str, Any], wrapping: str, wrapped: bytes, **key: Any) -> dict[str, Any]:
    return {**key, "import": {"import_job_id": job["import_job_id"],
                              "wrapping_algorithm": wrapping, "wrapped_material": B(wrapped)}}


def audit_records(srv: LiveServer) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    after = 0
    while True:
        status, _, page = srv.call("GET", f"/v1/audit?after_seq={after}&limit=1000",
                                   role="auditor")
        assert status == 200, page
        records += page["records"]
        if page["next_after_seq"] is None:
            return records
        after = page["next_after_seq"]


def ec_key(tmp: Path, curve: str = "P-256") -> tuple[bytes, Path]:
    """(PKCS#8 DER of a new EC key, its public key PEM file), both made by openssl."""
    pem = openssl("genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{curve}")
    (tmp / "ec.pem").write_bytes(pem)
    openssl("pkey", "-in", tmp / "ec.pem", "-pubout", "-out", tmp / "ec-pub.pem")
    der = openssl("pkcs8", "-topk8", "-nocrypt", "-in", tmp / "ec.pem", "-outform", "DER")
    return der, tmp / "ec-pub.pem"


def test_the_import_job(srv: LiveServer, tmp_path: Path) -> None:
    job = new_job(srv)
    assert set(job) == {"import_job_id", "public_key", "wrapping_key_spec",
                        "wrapping_algorithms", "created_at", "expires_at"}
    assert job["wrapping_key_spec"] == "RSA_3072"
    assert job["wrapping_algorithms"] == ["RSA_OAEP_SHA256", "RSA_AES_KEY_WRAP_SHA256"]
    (tmp_path / "wrap.pem").write_text(job["public_key"])
    text = openssl("pkey", "-pubin", "-in", tmp_path / "wrap.pem", "-noout", "-text").decode()
    assert "3072 bit" in text
    # the job is sealed on disk: 0600 in a 0700 folder, no private key in clear
    folder = srv.data_dir / "import-jobs"
    path = folder / f"{job['import_job_id']}.job"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    blob = path.read_bytes()
    assert blob[0] == 1 and b"private" not in blob and b"PRIVATE" not in blob


def test_an_aes_key_wrapped_by_openssl_oaep_encrypts_and_decrypts(srv: LiveServer,
                                                                  tmp_path: Path) -> None:
    job = new_job(srv)
    material = os.urandom(32)
    wrapped = oaep_with_openssl(tmp_path, job, material)
    status, _, key = srv.call("POST", "/v1/keys", import_body(
        job, "RSA_OAEP_SHA256", wrapped, algorithm="aes-256-gcm", usage="encrypt",
        name="byok-aes"), role="operator")
    assert status == 201, key
    assert key["id"] == job["import_job_id"]
    assert key["origin"] == "imported" and key["versions"][0]["origin"] == "imported"
    # FerroHSM encrypts and decrypts with it...
    status, _, enc = srv.call("POST", "/v1/keys/byok-aes/encrypt", {"plaintext": B(b"hello")},
                              role="service")
    assert status == 200, enc
    status, _, dec = srv.call("POST", "/v1/keys/byok-aes/decrypt",
                              {"ciphertext": enc["ciphertext"]}, role="service")
    assert (status, base64.b64decode(dec["plaintext"])) == (200, b"hello")
    # ...and it is the same key: what FerroHSM encrypted opens locally, and the reverse
    blob = base64.b64decode(enc["ciphertext"].split(":", 2)[2])
    assert AESGCM(material).decrypt(blob[:12], blob[12:], None) == b"hello"
    nonce = os.urandom(12)
    local = "fhsm:v1:" + B(nonce + AESGCM(material).encrypt(nonce, b"made locally", None))
    status, _, dec = srv.call("POST", "/v1/keys/byok-aes/decrypt", {"ciphertext": local},
                              role="service")
    assert (status, base64.b64decode(dec["plaintext"])) == (200, b"made locally")
    # a job is used once
    status, _, again = srv.call("POST", "/v1/keys", import_body(
        job, "RSA_OAEP_SHA256", wrapped, algorithm="aes-256-gcm", usage="encrypt"),
        role="operator")
    assert status == 404 and again["error"]["code"] == "not_found"


def test_an_ec_key_wrapped_by_the_openssl_hybrid_signs_for_openssl(srv: LiveServer,
                                                                     tmp_path: Path) -> None:
    der, public_pem = ec_key(tmp_path)
    job = new_job(srv, role="administrator")
    wrapped = hybrid_with_openssl(tmp_path, job, der)
    status, _, key = srv.call("POST", "/v1/keys", import_body(
        job, "RSA_AES_KEY_WRAP_SHA256", wrapped, algorithm="ec-p256", usage="sign",
        tags=["release"]))
    assert status == 201, key
    assert key["origin"] == "imported"
    message = b"release 1.2.3"
    status, _, signed = srv.call("POST", f"/v1/keys/{key['id']}/sign", {"message": B(message)},
                                 role="service")
    assert status == 200, signed
    (tmp_path / "msg").write_bytes(message)
    (tmp_path / "sig").write_bytes(base64.b64decode(signed["signature"]))
    out = openssl("dgst", "-sha256", "-verify", public_pem, "-signature", tmp_path / "sig",
                  tmp_path / "msg")
    assert b"Verified OK" in out
    status, _, pub = srv.call("GET", f"/v1/keys/{key['id']}/public-key")
    assert pub["pem"] == public_pem.read_text()


def test_rsa_keys_come_in_by_the_hybrid(srv: LiveServer, tmp_path: Path) -> None:
    pem = openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048")
    algorithm, der = read_material(pem)
    assert algorithm == "rsa-2048"
    job = new_job(srv)
    wrapped = hybrid_with_openssl(tmp_path, job, der)
    status, _, key = srv.call("POST", "/v1/keys", import_body(
        job, "RSA_AES_KEY_WRAP_SHA256", wrapped, algorithm="rsa-2048", usage="sign"),
        role="operator")
    assert status == 201, key
    status, _, signed = srv.call("POST", f"/v1/keys/{key['id']}/sign", {"message": B(b"x")},
                                 role="service")
    assert status == 200 and signed["algorithm"] == "rsa-pss-sha256"


def refused(srv: LiveServer, body: dict[str, Any], role: str = "operator",
            path: str = "/v1/keys") -> tuple[int, dict[str, Any]]:
    status, _, reply = srv.call("POST", path, body, role=role)
    return status, reply


def test_material_that_does_not_fit_the_declared_algorithm_is_refused(
        srv: LiveServer, tmp_path: Path) -> None:
    der, _ = ec_key(tmp_path)
    job = new_job(srv)
    wrapped = hybrid_with_openssl(tmp_path, job, der)
    cases = [("ec-p384", "sign", "curve"), ("rsa-2048", "sign", "not an RSA key"),
             ("aes-256-gcm", "encrypt", "exactly 32 raw bytes")]
    for algorithm, usage, says in cases:
        status, reply = refused(srv, import_body(job, "RSA_AES_KEY_WRAP_SHA256", wrapped,
                                                 algorithm=algorithm, usage=usage))
        assert status == 400 and says in reply["error"]["message"], reply
        assert B(der)[:40] not in str(reply) and B(wrapped)[:40] not in str(reply)
    # the wrong usage for the algorithm, and an unknown wrapping algorithm
    status, reply = refused(srv, import_body(job, "RSA_AES_KEY_WRAP_SHA256", wrapped,
                                             algorithm="ec-p256", usage="encrypt"))
    assert status == 400 and "cannot be used for encrypt" in reply["error"]["message"]
    status, reply = refused(srv, import_body(job, "RSA_PKCS1", wrapped, algorithm="ec-p256",
                                             usage="sign"))
    assert status == 400 and "wrapping_algorithm must be one of" in reply["error"]["message"]
    # the refusals did not use the job up
    status, reply = refused(srv, import_body(job, "RSA_AES_KEY_WRAP_SHA256", wrapped,
                                             algorithm="ec-p256", usage="sign"))
    assert status == 201, reply


def test_tampered_or_misdeclared_wrapping_is_one_opaque_refusal(srv: LiveServer,
                                                                tmp_path: Path) -> None:
    job = new_job(srv)
    material = os.urandom(32)
    oaep = oaep_with_openssl(tmp_path, job, material)
    hybrid = hybrid_with_openssl(tmp_path, job, material)
    flipped_rsa = bytes([oaep[0] ^ 1]) + oaep[1:]
    flipped_kwp = hybrid[:-1] + bytes([hybrid[-1] ^ 1])
    other = new_job(srv)
    cases = [(flipped_rsa, "RSA_OAEP_SHA256", job), (flipped_kwp, "RSA_AES_KEY_WRAP_SHA256", job),
             (hybrid[:-8], "RSA_AES_KEY_WRAP_SHA256", job), (oaep, "RSA_AES_KEY_WRAP_SHA256", job),
             (hybrid, "RSA_OAEP_SHA256", job), (oaep, "RSA_OAEP_SHA256", other)]
    messages = set()
    for wrapped, wrapping, to in cases:
        status, reply = refused(srv, import_body(to, wrapping, wrapped, algorithm="aes-256-gcm",
                                                 usage="encrypt"))
        assert status == 400, reply
        messages.add(reply["error"]["message"])
    assert messages == {"the wrapped material could not be unwrapped with this import job's "
                        "key (wrong job, wrong wrapping algorithm, or altered bytes)"}
    status, reply = refused(srv, import_body(job, "RSA_OAEP_SHA256", oaep,
                                             algorithm="aes-256-gcm", usage="encrypt"))
    assert status == 201, reply


def test_an_approval_id_on_an_import_that_needs_none_is_checked_not_recorded(
        srv: LiveServer, tmp_path: Path) -> None:
    """An untagged import needs no approval; an X-Approval-ID sent with it is checked like any
    other (an id nobody parked for this import is refused) rather than copied into the record
    as if it had authorised the import."""
    job = new_job(srv)
    wrapped = oaep_with_openssl(tmp_path, job, os.urandom(32))
    foreign = "0190a2b3-c4d5-7e6f-8a9b-0c1d2e3f4a5b"
    status, _, answer = srv.call("POST", "/v1/keys", import_body(
        job, "RSA_OAEP_SHA256", wrapped, algorithm="aes-256-gcm", usage="encrypt"),
        role="operator", headers={"X-Approval-ID": foreign})
    assert status in (403, 404, 409) and answer["error"]["code"] != "approval_required", answer
    assert not [r for r in audit_records(srv) if r["action"] == "key.create"
                and (r.get("details") or {}).get("approval_id") == foreign]


def test_roles(srv: LiveServer, tmp_path: Path) -> None:
    for role in ("service", "auditor"):
        status, _, reply = srv.call("POST", "/v1/import-jobs", {}, role=role)
        assert status == 403 and reply["error"]["code"] == "forbidden"
    job = new_job(srv)
    wrapped = oaep_with_openssl(tmp_path, job, os.urandom(32))
    body = import_body(job, "RSA_OAEP_SHA256", wrapped, algorithm="aes-256-gcm",
                       usage="encrypt")
    for role in ("service", "auditor"):
        assert refused(srv, body, role=role)[0] == 403
    plain = {"import_job_id": job["import_job_id"], "wrapping_algorithm": "RSA_OAEP_SHA256",
             "wrapped_material": B(wrapped)}
    assert refused(srv, plain, "service", "/v1/keys/byok-aes/import")[0] == 403
    assert srv.call("POST", "/v1/import-jobs", {})[0] == 201  # administrator


def test_a_new_version_of_an_existing_key(srv: LiveServer, tmp_path: Path) -> None:
    status, _, key = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                   "usage": "encrypt"}, role="operator")
    assert key["origin"] == "generated" and key["versions"][0]["origin"] == "generated"
    _, _, old = srv.call("POST", f"/v1/keys/{key['id']}/encrypt", {"plaintext": B(b"v1")},
                         role="service")
    job = new_job(srv)
    material = os.urandom(32)
    body = {"import_job_id": job["import_job_id"], "wrapping_algorithm": "RSA_OAEP_SHA256",
            "wrapped_material": B(oaep_with_openssl(tmp_path, job, material))}
    status, _, imported = srv.call("POST", f"/v1/keys/{key['id']}/import", body, role="operator")
    assert status == 200, imported
    assert imported["primary_version"] == 2 and imported["origin"] == "generated"
    assert [v["origin"] for v in imported["versions"]] == ["generated", "imported"]
    assert imported["history"][-1]["action"] == "import"
    _, _, new = srv.call("POST", f"/v1/keys/{key['id']}/encrypt", {"plaintext": B(b"v2")},
                         role="service")
    blob = base64.b64decode(new["ciphertext"].split(":", 2)[2])
    assert new["ciphertext"].startswith("fhsm:v2:")
    assert AESGCM(material).decrypt(blob[:12], blob[12:], None) == b"v2"
    status, _, dec = srv.call("POST", f"/v1/keys/{key['id']}/decrypt",
                              {"ciphertext": old["ciphertext"]}, role="service")
    assert (status, base64.b64decode(dec["plaintext"])) == (200, b"v1")
    # an EC key cannot take AES material; a revoked key takes no version
    ec = srv.call("POST", "/v1/keys", {"algorithm": "ec-p256", "usage": "sign"})[2]
    job = new_job(srv)
    body = {"import_job_id": job["import_job_id"], "wrapping_algorithm": "RSA_OAEP_SHA256",
            "wrapped_material": B(oaep_with_openssl(tmp_path, job, material))}
    status, _, reply = srv.call("POST", f"/v1/keys/{ec['id']}/import", body)
    assert status == 400 and "PKCS#8" in reply["error"]["message"]
    srv.call("POST", f"/v1/keys/{key['id']}/revoke", {})
    status, _, reply = srv.call("POST", f"/v1/keys/{key['id']}/import", body)
    assert status == 409, reply


def test_the_same_material_is_not_imported_again_as_a_new_version(srv: LiveServer,
                                                                   tmp_path: Path) -> None:
    """An import of a version's own material as the key's next version was taken as a
    rotation: a new version of an unchanged key, with a fresh AES-GCM budget for a key whose
    budget is per key, not per version number (an outside tester). Refused, 409, the job
    left usable for other material."""
    material = os.urandom(32)
    job = new_job(srv)
    status, _, key = srv.call("POST", "/v1/keys", import_body(
        job, "RSA_OAEP_SHA256", oaep_with_openssl(tmp_path, job, material),
        algorithm="aes-256-gcm", usage="encrypt"), role="operator")
    assert status == 201, key
    job = new_job(srv)
    again = {"import_job_id": job["import_job_id"], "wrapping_algorithm": "RSA_OAEP_SHA256",
             "wrapped_material": B(oaep_with_openssl(tmp_path, job, material))}
    status, _, reply = srv.call("POST", f"/v1/keys/{key['id']}/import", again, role="operator")
    assert status == 409 and "already version 1" in reply["error"]["message"], reply
    fresh = {**again, "wrapped_material": B(oaep_with_openssl(tmp_path, job, os.urandom(32)))}
    status, _, reply = srv.call("POST", f"/v1/keys/{key['id']}/import", fresh, role="operator")
    assert status == 200 and reply["primary_version"] == 2, reply


def test_audit_records_never_hold_material(srv: LiveServer, tmp_path: Path) -> None:
    job = new_job(srv)
    material = os.urandom(32)
    wrapped = oaep_with_openssl(tmp_path, job, material)
    tampered = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    bad = import_body(job, "RSA_OAEP_SHA256", tampered, algorithm="aes-256-gcm", usage="encrypt")
    assert refused(srv, bad)[0] == 400
    status, reply = refused(srv, import_body(job, "RSA_OAEP_SHA256", wrapped,
                                             algorithm="aes-256-gcm", usage="encrypt"))
    assert status == 201, reply
    generated = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt"})[2]
    records = audit_records(srv)
    made = [r for r in records if (r["action"], r["outcome"], r["key_id"])
            == ("key.create", "success", generated["id"])]
    assert made[0]["details"]["origin"] == "generated"
    mine = [r for r in records if job["import_job_id"] in str(r)]
    actions = [(r["action"], r["outcome"]) for r in mine]
    assert ("import_job.create", "success") in actions
    assert ("key.import", "error") in actions  # the refused attempt
    created = [r for r in mine if (r["action"], r["outcome"]) == ("key.create", "success")]
    assert len(created) == 1 and created[0]["details"]["origin"] == "imported"
    assert created[0]["details"]["wrapping_algorithm"] == "RSA_OAEP_SHA256"
    assert created[0]["key_id"] == job["import_job_id"]
    everything = str(records)
    for secret in (material, wrapped):
        assert B(secret)[:24] not in everything and secret.hex()[:24] not in everything


def test_import_under_dual_control_by_tag(srv: LiveServer, tmp_path: Path) -> None:
    job = new_job(srv)
    wrapped = oaep_with_openssl(tmp_path, job, os.urandom(32))
    body = import_body(job, "RSA_OAEP_SHA256", wrapped, algorithm="aes-256-gcm",
                       usage="encrypt", tags=["byok"], name="byok-dual")
    alice = srv.token("administrator", "alice")
    status, _, parked = srv.call("POST", "/v1/keys", body, token=alice)
    assert status == 202, parked
    approval = parked["approval"]
    assert (approval["action"], approval["key_id"]) == ("key.import", job["import_job_id"])
    assert srv.call("GET", "/v1/keys/byok-dual")[0] == 404  # nothing made yet
    # the approval is bound to the exact request: other material does not redeem it
    other = import_body(job, "RSA_OAEP_SHA256", oaep_with_openssl(tmp_path, job, os.urandom(32)),
                        algorithm="aes-256-gcm", usage="encrypt", tags=["byok"],
                        name="byok-dual")
    status, _, reply = srv.call("POST", f"/v1/approvals/{approval['id']}/approve", {},
                                token=srv.token("operator", "bob"))
    assert status == 200, reply
    headers = {"X-Approval-ID": approval["id"]}
    assert srv.call("POST", "/v1/keys", other, token=alice, headers=headers)[0] == 403
    status, _, key = srv.call("POST", "/v1/keys", body, token=alice, headers=headers)
    assert status == 201, key
    assert key["id"] == job["import_job_id"] and key["tags"] == ["byok"]
    # a new version of a key under that tag is gated the same way
    job = new_job(srv)
    plain = {"import_job_id": job["import_job_id"], "wrapping_algorithm": "RSA_OAEP_SHA256",
             "wrapped_material": B(oaep_with_openssl(tmp_path, job, os.urandom(32)))}
    status, _, parked = srv.call("POST", "/v1/keys/byok-dual/import", plain, token=alice)
    assert status == 202 and parked["approval"]["key_id"] == key["id"]


def test_a_quorum_on_rotate_holds_for_an_imported_version(srv: LiveServer,
                                                          tmp_path: Path) -> None:
    """Importing a version rotates the key to material its importer knows: where rotate needs
    approval, so does the import (it was a way around the quorum, by one operator alone)."""
    key = srv.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm", "usage": "encrypt",
                                        "tags": ["rotated"]})[2]
    alice = srv.token("operator", "alice")
    assert srv.call("POST", f"/v1/keys/{key['id']}/rotate", {}, token=alice)[0] == 202
    job = new_job(srv)
    plain = {"import_job_id": job["import_job_id"], "wrapping_algorithm": "RSA_OAEP_SHA256",
             "wrapped_material": B(oaep_with_openssl(tmp_path, job, os.urandom(32)))}
    status, _, parked = srv.call("POST", f"/v1/keys/{key['id']}/import", plain, token=alice)
    assert status == 202 and parked["approval"]["action"] == "key.import", parked
    assert srv.call("GET", f"/v1/keys/{key['id']}")[2]["primary_version"] == 1


def test_an_expired_job_is_refused_and_purged(srv: LiveServer, tmp_path: Path) -> None:
    job = new_job(srv)
    wrapped = oaep_with_openssl(tmp_path, job, os.urandom(32))
    body = import_body(job, "RSA_OAEP_SHA256", wrapped, algorithm="aes-256-gcm",
                       usage="encrypt")
    service = srv.rt.service
    real = service.clock
    service.clock = lambda: real() + timedelta(hours=24, seconds=1)
    try:
        status, reply = refused(srv, body)
    finally:
        service.clock = real
    assert status == 410 and "expired" in reply["error"]["message"], reply
    assert not (srv.data_dir / "import-jobs" / f"{job['import_job_id']}.job").exists()
    assert refused(srv, body)[0] == 404
    expired = [r for r in audit_records(srv) if r["action"] == "key.import"
               and r["key_id"] == job["import_job_id"]]
    assert [r["outcome"] for r in expired] == ["error", "error"]


def test_a_job_survives_a_restart(tmp_path: Path) -> None:
    keep = Secrets(os.urandom(32), os.urandom(32), os.urandom(32))
    first = LiveServer(tmp_path, key_store="sqlite", secrets_=keep)
    try:
        job = new_job(first)
    finally:
        first.close()
    wrapped = oaep_with_openssl(tmp_path, job, os.urandom(32))
    second = LiveServer(tmp_path, key_store="sqlite", secrets_=keep)
    try:
        status, reply = refused(second, import_body(job, "RSA_OAEP_SHA256", wrapped,
                                                    algorithm="aes-256-gcm", usage="encrypt"))
        assert status == 201 and reply["origin"] == "imported", reply
        status, _, again = second.call("GET", f"/v1/keys/{reply['id']}")
        assert again["origin"] == "imported"
    finally:
        second.close()
    assert not list((tmp_path / "data" / "import-jobs").glob("*.job"))  # used, so deleted


def test_local_wrapping_matches_what_openssl_unwraps(tmp_path: Path) -> None:
    """The CLI's own wrapping (crypto/importwrap.py) is the format openssl reads back."""
    private = openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072")
    (tmp_path / "wrap-key.pem").write_bytes(private)
    public = openssl("pkey", "-in", tmp_path / "wrap-key.pem", "-pubout").decode()
    material = os.urandom(32)
    wrapped = wrap_for_import(public, "RSA_OAEP_SHA256", material)
    out = openssl("pkeyutl", "-decrypt", "-inkey", tmp_path / "wrap-key.pem", *OAEP,
                  data=wrapped)
    assert out == material
    der = os.urandom(100)
    hybrid = wrap_for_import(public, "RSA_AES_KEY_WRAP_SHA256", der)
    ephemeral = openssl("pkeyutl", "-decrypt", "-inkey", tmp_path / "wrap-key.pem", *OAEP,
                        data=hybrid[:384])
    (tmp_path / "kwp").write_bytes(hybrid[384:])
    out = openssl("enc", "-d", "-id-aes256-wrap-pad", "-K", ephemeral.hex(), "-iv", "A65959A6",
                  "-in", tmp_path / "kwp")
    assert out == der


def test_an_altered_job_is_refused_then_purged(srv: LiveServer, tmp_path: Path) -> None:
    job = new_job(srv)
    path = srv.data_dir / "import-jobs" / f"{job['import_job_id']}.job"
    blob = bytearray(path.read_bytes())
    blob[40] ^= 1
    path.write_bytes(bytes(blob))
    wrapped = oaep_with_openssl(tmp_path, job, os.urandom(32))
    status, reply = refused(srv, import_body(job, "RSA_OAEP_SHA256", wrapped,
                                             algorithm="aes-256-gcm", usage="encrypt"))
    assert status == 409 and "failed its integrity check" in reply["error"]["message"], reply
    # the next job's creation purges it (and any expired one), with a record
    stale = new_job(srv)
    service = srv.rt.service
    real = service.clock
    service.clock = lambda: real() + timedelta(hours=25)
    try:
        new_job(srv)
    finally:
        service.clock = real
    assert not path.exists()
    assert not (srv.data_dir / "import-jobs" / f"{stale['import_job_id']}.job").exists()
    purged = {r["details"]["import_job_id"]: r["message"] for r in audit_records(srv)
              if r["action"] == "import_job.purge"}
    assert "unreadable" in purged[job["import_job_id"]]
    assert "expired" in purged[stale["import_job_id"]]
