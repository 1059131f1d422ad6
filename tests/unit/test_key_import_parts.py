"""Key import (BYOK) in pieces: the origin in the authenticated key record, the unwrapping of
both wrapping algorithms, the checks of the unwrapped material, the key files the CLI reads, and
the import job stores."""

from __future__ import annotations

import json
import os
import stat
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ferrohsm.crypto import importwrap as iw
from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.errors import BadRequest, CryptoFailure, IntegrityError
from ferrohsm.domain.model import Key, Origin, key_from_record, key_to_record, key_view
from ferrohsm.store.importjobs_files import FolderImportJobStore, MemoryImportJobStore
from ferrohsm.store.records import RecordCodec

CODEC = RecordCodec(RecordMac.derive(bytes(range(32))))
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def wrapping_key() -> bytes:
    return iw.new_wrapping_key()


def imported_key() -> Key:
    return lc.new_key(key_id=str(uuid.uuid4()), name=None, description="", algorithm="ec-p256",
                      usage="sign", tags=(), sealed=b"\x01sealed", now=NOW, actor="alice",
                      origin=Origin.IMPORTED)


def test_the_origin_is_in_the_record_and_under_its_mac() -> None:
    key = imported_key()
    assert key.origin is Origin.IMPORTED and key_view(key)["origin"] == "imported"
    stored = CODEC.encode(key)
    assert CODEC.decode(key.id, stored) == key
    relabelled = stored.replace(b'"origin":"imported"', b'"origin":"generated"')
    assert relabelled != stored
    with pytest.raises(IntegrityError) as caught:
        CODEC.decode(key.id, relabelled)
    assert caught.value.details["problem"] == "mac_mismatch"


def test_records_written_before_the_origin_read_as_generated() -> None:
    record = key_to_record(imported_key())
    for version in record["versions"]:
        del version["origin"]
    old = key_from_record(record)
    assert old.origin is Origin.GENERATED and key_view(old)["versions"][0]["origin"] == "generated"


def test_an_imported_version_is_primary_and_keeps_the_others(wrapping_key: bytes) -> None:
    generated = lc.new_key(key_id=str(uuid.uuid4()), name=None, description="",
                           algorithm="aes-256-gcm", usage="encrypt", tags=(), sealed=b"\x01a",
                           now=NOW, actor="alice")
    key = lc.import_version(generated, b"\x01b", NOW, "bob")
    assert key.primary_version == 2 and key.origin is Origin.GENERATED
    assert [v.origin for v in key.versions] == [Origin.GENERATED, Origin.IMPORTED]
    assert key.history[-1].action == "import"


def public(wrapping_key: bytes) -> str:
    return iw.public_pem(wrapping_key)


@pytest.mark.parametrize("wrapping", iw.WRAPPING_ALGORITHMS)
def test_both_wrappings_round_trip(wrapping_key: bytes, wrapping: str) -> None:
    material = os.urandom(32)
    wrapped = iw.wrap_for_import(public(wrapping_key), wrapping, material)
    assert iw.unwrap(wrapping_key, wrapping, wrapped) == material


def test_material_too_long_for_one_oaep_block_names_the_way_out(wrapping_key: bytes) -> None:
    """An RSA private key wrapped with RSA_OAEP_SHA256 failed as "Encryption failed" (tester):
    the largest material that fits is wrapped, one byte more is refused naming the hybrid."""
    room = 3072 // 8 - 66
    wrapped = iw.wrap_for_import(public(wrapping_key), iw.RSA_OAEP_SHA256, b"k" * room)
    assert iw.unwrap(wrapping_key, iw.RSA_OAEP_SHA256, wrapped) == b"k" * room
    with pytest.raises(ValueError, match=f"more than one RSA_OAEP_SHA256 block holds \\({room}\\)"
                                         ": use RSA_AES_KEY_WRAP_SHA256"):
        iw.wrap_for_import(public(wrapping_key), iw.RSA_OAEP_SHA256, b"k" * (room + 1))


def test_every_unwrapping_failure_is_the_same_opaque_refusal(wrapping_key: bytes) -> None:
    material = os.urandom(32)
    oaep = iw.wrap_for_import(public(wrapping_key), iw.RSA_OAEP_SHA256, material)
    hybrid = iw.wrap_for_import(public(wrapping_key), iw.RSA_AES_KEY_WRAP_SHA256, material)
    other = iw.new_wrapping_key()
    cases = [
        (wrapping_key, iw.RSA_OAEP_SHA256, oaep[:-1] + bytes([oaep[-1] ^ 1])),
        (wrapping_key, iw.RSA_OAEP_SHA256, oaep[:100]),
        (wrapping_key, iw.RSA_OAEP_SHA256, hybrid),
        (wrapping_key, iw.RSA_AES_KEY_WRAP_SHA256, oaep),
        (wrapping_key, iw.RSA_AES_KEY_WRAP_SHA256, hybrid[:-1] + bytes([hybrid[-1] ^ 1])),
        (wrapping_key, iw.RSA_AES_KEY_WRAP_SHA256, hybrid[:390]),
        (other, iw.RSA_OAEP_SHA256, oaep),
        # the hybrid's RSA part must carry an AES-256 key, not any 32-byte-or-other value
        (wrapping_key, iw.RSA_AES_KEY_WRAP_SHA256,
         iw.wrap_for_import(public(wrapping_key), iw.RSA_OAEP_SHA256, os.urandom(16))
         + hybrid[384:]),
    ]
    messages = set()
    for key, wrapping, wrapped in cases:
        with pytest.raises(CryptoFailure) as caught:
            iw.unwrap(key, wrapping, wrapped)
        messages.add(caught.value.message)
    assert len(messages) == 1
    with pytest.raises(BadRequest, match="wrapping_algorithm must be one of"):
        iw.unwrap(wrapping_key, "RSA_PKCS1_V1_5", oaep)
    with pytest.raises(BadRequest, match="wrapped_material must be"):
        iw.unwrap(wrapping_key, iw.RSA_OAEP_SHA256, b"\0" * (iw.MAX_WRAPPED_BYTES + 1))


def der(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
        fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> bytes:
    return private.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())


def test_material_is_checked_against_the_declared_algorithm() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    rsa2048 = rsa.generate_private_key(65537, 2048)
    assert iw.normalize("ec-p256", der(p256)) == der(p256)
    # the traditional forms are taken and stored as PKCS#8
    assert iw.normalize("ec-p256", der(p256, serialization.PrivateFormat.TraditionalOpenSSL)) \
        == der(p256)
    assert iw.normalize("rsa-2048", der(rsa2048)) == der(rsa2048)
    refusals = [("ec-p384", der(p256), "curve secp256r1; ec-p384 needs secp384r1"),
                ("rsa-4096", der(rsa2048), "2048 bits; rsa-4096 needs 4096"),
                ("rsa-2048", der(p256), "not an RSA key"),
                ("ec-p256", der(rsa2048), "not an EC key"),
                ("aes-256-gcm", der(p256), "exactly 32 raw bytes"),
                ("ec-p256", os.urandom(32), "not an unencrypted PKCS#8 DER ec-p256"),
                ("ec-p256", der(p256)[:-3], "not an unencrypted PKCS#8 DER ec-p256"),
                # weak material an outside tester imported: guessable, or a small exponent
                ("aes-256-gcm", bytes(32), "one byte repeated, not a key"),
                ("aes-256-gcm", b"\xff" * 32, "one byte repeated, not a key"),
                ("rsa-2048", der(rsa.generate_private_key(3, 2048)), "public exponent")]
    for algorithm, material, says in refusals:
        with pytest.raises(BadRequest) as caught:
            iw.normalize(algorithm, material)
        assert says in caught.value.message
        assert material.hex()[:16] not in caught.value.message
    with pytest.raises(BadRequest, match="unknown algorithm"):
        iw.normalize("des", b"x" * 8)


def test_the_key_files_the_cli_reads() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    rsa2048 = rsa.generate_private_key(65537, 2048)
    raw = os.urandom(32)
    assert iw.read_material(raw) == ("aes-256-gcm", raw)
    pem = p384.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())
    assert iw.read_material(pem) == ("ec-p384", der(p384))
    assert iw.read_material(der(rsa2048, serialization.PrivateFormat.TraditionalOpenSSL)) == \
        ("rsa-2048", der(rsa2048))
    secp256k1 = ec.generate_private_key(ec.SECP256K1())
    assert iw.read_material(der(secp256k1))[0] == "ec-secp256k1"  # the server refuses it
    locked = p384.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(b"pw"))
    with pytest.raises(ValueError, match="encrypted"):
        iw.read_material(locked)
    with pytest.raises(ValueError, match="neither 32 raw bytes"):
        iw.read_material(b"not a key at all")


def test_the_folder_job_store(tmp_path: Path) -> None:
    store = FolderImportJobStore(tmp_path / "jobs")
    job = str(uuid.uuid4())
    assert store.get(job) is None and store.ids() == []
    store.put(job, b"\x01sealed")
    (tmp_path / "jobs" / "stray.job").write_bytes(b"x")  # not a job id: ignored
    assert store.get(job) == b"\x01sealed" and store.ids() == [job]
    assert stat.S_IMODE((tmp_path / "jobs" / f"{job}.job").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "jobs").stat().st_mode) == 0o700
    assert FolderImportJobStore(tmp_path / "jobs").get(job) == b"\x01sealed"  # a restart
    assert store.delete(job) and not store.delete(job) and store.get(job) is None
    with pytest.raises(BadRequest):
        store.get("../keys")
    memory = MemoryImportJobStore()
    memory.put(job, b"s")
    assert memory.ids() == [job] and memory.delete(job) and memory.get(job) is None


def test_a_sealed_job_reads_back_only_as_itself(wrapping_key: bytes) -> None:
    from ferrohsm.crypto.seal import Sealer
    from ferrohsm.service.imports import ImportJob
    from ferrohsm.store.importjobs import JOB_CONTEXT

    sealer = Sealer(bytes(32))
    job = ImportJob(str(uuid.uuid4()), NOW, NOW, "alice", wrapping_key)
    blob = sealer.seal(job.to_json(), key_id=job.id, version=1, algorithm=JOB_CONTEXT)
    opened = ImportJob.from_json(job.id, sealer.unseal(blob, key_id=job.id, version=1,
                                                      algorithm=JOB_CONTEXT))
    assert opened == job and "private_der" not in repr(job)
    with pytest.raises(IntegrityError):  # moved to another job id
        sealer.unseal(blob, key_id=str(uuid.uuid4()), version=1, algorithm=JOB_CONTEXT)
    with pytest.raises(IntegrityError):  # taken for key material
        sealer.unseal(blob, key_id=job.id, version=1, algorithm="aes-256-gcm")
    assert b"PRIVATE" not in blob and json.loads(job.to_json())["id"] == job.id
