"""Committed sealed blobs stay readable: the on-disk format of sealed key material is pinned.

tests/vectors/sealed_blobs.json (made by tests/vectors/make_sealed_blobs.py) records, for a fixed
test master key, the exact blobs that sealing produced with recorded nonces. Today's code must
reproduce those bytes from the same nonces, and unseal the committed blobs, so a release can never
silently stop opening a data directory written by an earlier one.
"""

from __future__ import annotations

import inspect
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ferrohsm.crypto.seal import FORMAT, Sealer
from ferrohsm.domain.errors import ConfigError, IntegrityError

DOCUMENT: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent.parent / "vectors" / "sealed_blobs.json").read_text())
MASTER = bytes.fromhex(DOCUMENT["master_key"])
VECTORS: list[dict[str, Any]] = DOCUMENT["vectors"]
KEYS = [v for v in VECTORS if v["purpose"] == "key-material"]
CHECKS = [v for v in VECTORS if v["purpose"] == "check"]


def name_of(vector: dict[str, Any]) -> str:
    return str(vector["name"])


def replaying(nonce: bytes) -> Callable[[int], bytes]:
    """A nonce source that hands out the recorded nonce once, as os.urandom would a fresh one."""
    handed: list[bytes] = []

    def random_bytes(size: int) -> bytes:
        assert size == len(nonce) and not handed, "the sealer asked for an unexpected nonce"
        handed.append(nonce)
        return nonce
    return random_bytes


def context(vector: dict[str, Any]) -> dict[str, Any]:
    return {"key_id": vector["key_id"], "version": vector["version"],
            "algorithm": vector["algorithm"]}


def test_the_file_covers_keys_and_the_check_value() -> None:
    assert len(MASTER) == 32 and len(KEYS) >= 3 and len(CHECKS) == 1
    assert {v["algorithm"] for v in KEYS} >= {"aes-256-gcm", "ec-p256"}
    assert all(bytes.fromhex(v["sealed"])[0] == FORMAT for v in VECTORS)


@pytest.mark.parametrize("vector", KEYS, ids=name_of)
def test_sealing_with_the_recorded_nonce_reproduces_the_bytes(vector: dict[str, Any]) -> None:
    sealer = Sealer(MASTER, random_bytes=replaying(bytes.fromhex(vector["nonce"])))
    blob = sealer.seal(bytes.fromhex(vector["material"]), **context(vector))
    assert blob.hex() == vector["sealed"]


@pytest.mark.parametrize("vector", KEYS, ids=name_of)
def test_the_committed_blobs_unseal(vector: dict[str, Any]) -> None:
    sealer = Sealer(MASTER)  # the production nonce source: unsealing needs none
    material = sealer.unseal(bytes.fromhex(vector["sealed"]), **context(vector))
    assert material.hex() == vector["material"]


@pytest.mark.parametrize("vector", KEYS, ids=name_of)
def test_the_committed_blobs_stay_bound_to_their_context(vector: dict[str, Any]) -> None:
    blob = bytes.fromhex(vector["sealed"])
    with pytest.raises(IntegrityError):
        Sealer(MASTER).unseal(blob, **{**context(vector), "version": vector["version"] - 1 or 2})
    with pytest.raises(IntegrityError):
        Sealer(bytes(32)).unseal(blob, **context(vector))


@pytest.mark.parametrize("vector", KEYS, ids=name_of)
def test_the_layout_is_the_documented_one(vector: dict[str, Any]) -> None:
    """Decrypt with bare AES-GCM and an AAD built from the seal.py docstring, not from its code."""
    def lp(field: bytes) -> bytes:
        return struct.pack(">I", len(field)) + field
    aad = (b"\x01" + lp(b"key-material") + lp(vector["key_id"].encode())
           + struct.pack(">I", vector["version"]) + lp(vector["algorithm"].encode()))
    blob = bytes.fromhex(vector["sealed"])
    assert blob[1:13].hex() == vector["nonce"]
    plain = AESGCM(MASTER).decrypt(blob[1:13], blob[13:], aad)
    assert plain.hex() == vector["material"]


@pytest.mark.parametrize("vector", CHECKS, ids=name_of)
def test_the_committed_check_value(vector: dict[str, Any]) -> None:
    blob = bytes.fromhex(vector["sealed"])
    Sealer(MASTER).verify_check_value(blob)
    with pytest.raises(ConfigError):
        Sealer(bytes(32)).verify_check_value(blob)
    again = Sealer(MASTER, random_bytes=replaying(bytes.fromhex(vector["nonce"])))
    assert again.make_check_value().hex() == vector["sealed"]


def test_a_nonce_source_of_the_wrong_size_is_refused() -> None:
    sealer = Sealer(MASTER, random_bytes=lambda size: bytes(size - 1))
    with pytest.raises(ValueError, match="nonce source returned 11 bytes"):
        sealer.seal(b"k" * 32, key_id="k", version=1, algorithm="aes-256-gcm")


def test_production_nonces_come_from_os_urandom() -> None:
    assert inspect.signature(Sealer).parameters["random_bytes"].default is os.urandom
    assert "random_bytes" not in (Path(__file__).resolve().parents[2] / "ferrohsm" / "app.py"
                                  ).read_text()
