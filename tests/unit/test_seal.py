"""Sealing: every tampering, truncation, move and wrong key fails closed; the master key loader.

The property behind all of it: ``unseal`` returns exactly what was sealed for exactly that
(key id, version, algorithm) under exactly that master key, or raises IntegrityError. It never
returns other bytes and never puts the blob or the material in its message.
"""

from __future__ import annotations

import os
import re
from typing import TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferrohsm.crypto.seal import FORMAT, Sealer
from ferrohsm.domain.errors import ConfigError, IntegrityError

MASTER = bytes(range(32))
KEY_ID = "6f1c2a3b-0000-4000-8000-000000000001"
OTHER_ID = "6f1c2a3b-0000-4000-8000-000000000002"


class Context(TypedDict):
    key_id: str
    version: int
    algorithm: str


CONTEXT: Context = {"key_id": KEY_ID, "version": 1, "algorithm": "aes-256-gcm"}
MATERIAL = b"k" * 32
WRONG_MASTER = "the master key does not match the one this key store (data directory or database) was sealed with"


@pytest.fixture(scope="module")
def sealer() -> Sealer:
    return Sealer(MASTER)


def expect_integrity_error(sealer: Sealer, blob: bytes, **context: object) -> None:
    """Unsealing fails with the documented message, which carries none of the bytes."""
    where = {**CONTEXT, **context}
    with pytest.raises(IntegrityError) as caught:
        sealer.unseal(blob, **where)  # type: ignore[arg-type]  # callers pass wrong types on purpose
    message = str(caught.value)
    assert message == (f"sealed material of key {where['key_id']} version {where['version']} "
                       "failed its integrity check")
    assert caught.value.__cause__ is None
    if isinstance(blob, bytes) and len(blob) > 4:
        assert blob.hex() not in message and MATERIAL.hex() not in message


# ---- the happy path and the layout ----

def test_round_trip_and_layout(sealer: Sealer) -> None:
    blob = sealer.seal(MATERIAL, **CONTEXT)
    assert blob[0] == FORMAT == 0x01
    assert len(blob) == 1 + 12 + len(MATERIAL) + 16
    assert MATERIAL not in blob
    assert sealer.unseal(blob, **CONTEXT) == MATERIAL
    again = sealer.seal(MATERIAL, **CONTEXT)
    assert again[1:13] != blob[1:13], "a fresh random nonce per seal"


def test_a_new_sealer_with_the_same_master_key_unseals(sealer: Sealer) -> None:
    blob = sealer.seal(MATERIAL, **CONTEXT)
    assert Sealer(bytes(MASTER)).unseal(blob, **CONTEXT) == MATERIAL


# ---- tampering ----

def test_every_single_byte_flip_fails(sealer: Sealer) -> None:
    blob = sealer.seal(b"short", **CONTEXT)
    for index in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = bytearray(blob)
            tampered[index] ^= mask
            expect_integrity_error(sealer, bytes(tampered))


def test_every_truncation_and_an_extension_fails(sealer: Sealer) -> None:
    blob = sealer.seal(b"short", **CONTEXT)
    for length in range(len(blob)):
        expect_integrity_error(sealer, blob[:length])
    expect_integrity_error(sealer, blob + b"\x00")


@pytest.mark.parametrize("moved", [{"key_id": OTHER_ID}, {"version": 2}, {"algorithm": "ec-p256"},
                                   {"key_id": KEY_ID.upper()}, {"algorithm": "aes-256-gcm "}])
def test_a_blob_moved_to_another_context_fails(sealer: Sealer, moved: dict[str, object]) -> None:
    blob = sealer.seal(MATERIAL, **CONTEXT)
    expect_integrity_error(sealer, blob, **moved)


def test_wrong_master_key_fails(sealer: Sealer) -> None:
    blob = sealer.seal(MATERIAL, **CONTEXT)
    expect_integrity_error(Sealer(os.urandom(32)), blob)
    expect_integrity_error(Sealer(MASTER[:-1] + b"\x00"), blob)


@pytest.mark.parametrize("format_byte", [0x00, 0x02, 0x80, 0xFF])
def test_unknown_format_byte_fails(sealer: Sealer, format_byte: int) -> None:
    blob = sealer.seal(MATERIAL, **CONTEXT)
    expect_integrity_error(sealer, bytes([format_byte]) + blob[1:])


@pytest.mark.parametrize("blob", [b"", b"\x01", "text", None, bytearray(60)])
def test_garbage_fails_closed(sealer: Sealer, blob: object) -> None:
    expect_integrity_error(sealer, blob)  # type: ignore[arg-type]  # wrong types are the point


def test_tampering_one_key_leaves_the_other_intact(sealer: Sealer) -> None:
    first = sealer.seal(b"first material", **CONTEXT)
    other: Context = {**CONTEXT, "key_id": OTHER_ID}
    second = sealer.seal(b"second material", **other)
    expect_integrity_error(sealer, first[:-1] + bytes([first[-1] ^ 1]))
    assert sealer.unseal(second, **other) == b"second material"


@settings(database=None, max_examples=200)
@given(st.text(max_size=20), st.integers(1, 2 ** 32 - 1), st.text(max_size=20),
       st.text(max_size=20), st.integers(1, 2 ** 32 - 1), st.text(max_size=20))
def test_only_the_exact_context_unseals(key_a: str, version_a: int, algo_a: str,
                                        key_b: str, version_b: int, algo_b: str) -> None:
    """Length-prefixed AAD fields: no two different contexts are ever confused."""
    sealer = Sealer(MASTER)
    blob = sealer.seal(b"m", key_id=key_a, version=version_a, algorithm=algo_a)
    assert sealer.unseal(blob, key_id=key_a, version=version_a, algorithm=algo_a) == b"m"
    if (key_a, version_a, algo_a) != (key_b, version_b, algo_b):
        with pytest.raises(IntegrityError):
            sealer.unseal(blob, key_id=key_b, version=version_b, algorithm=algo_b)


def test_adjacent_fields_cannot_trade_characters(sealer: Sealer) -> None:
    blob = sealer.seal(MATERIAL, key_id="ab", version=1, algorithm="c")
    expect_integrity_error(sealer, blob, key_id="a", algorithm="bc")
    expect_integrity_error(sealer, blob, key_id="abc", algorithm="")


def test_sealing_refuses_nonsense_arguments(sealer: Sealer) -> None:
    for bad in ({"version": 0}, {"version": True}, {"version": 2 ** 32}, {"key_id": 1}):
        with pytest.raises((ValueError, TypeError)):
            sealer.seal(MATERIAL, **{**CONTEXT, **bad})  # type: ignore[arg-type]  # wrong types are the point
    with pytest.raises(ValueError):
        sealer.seal(b"", **CONTEXT)


# ---- master key check value and fingerprint ----

@pytest.mark.parametrize("master", [b"", b"x" * 31, b"x" * 33, "x" * 32, bytearray(32)])
def test_master_key_must_be_32_bytes(master: object) -> None:
    with pytest.raises(ConfigError, match="exactly 32 bytes"):
        Sealer(master)  # type: ignore[arg-type]  # wrong types are the point


def test_check_value_verifies_under_the_same_master_only(sealer: Sealer) -> None:
    check = sealer.make_check_value()
    sealer.verify_check_value(check)
    Sealer(bytes(MASTER)).verify_check_value(check)
    for wrong, blob in ((Sealer(os.urandom(32)), check), (sealer, check[:-1]),
                        (sealer, check[:5] + bytes([check[5] ^ 1]) + check[6:]), (sealer, b""),
                        (sealer, sealer.seal(MATERIAL, **CONTEXT))):
        with pytest.raises(ConfigError) as caught:
            wrong.verify_check_value(blob)
        assert str(caught.value) == WRONG_MASTER


def test_check_value_is_never_a_key(sealer: Sealer) -> None:
    check = sealer.make_check_value()
    expect_integrity_error(sealer, check, key_id="", version=1, algorithm="")


def test_fingerprint_identifies_without_revealing(sealer: Sealer) -> None:
    fingerprint = sealer.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{8}", fingerprint)
    assert fingerprint == Sealer(bytes(MASTER)).fingerprint() != Sealer(os.urandom(32)).fingerprint()
    assert fingerprint not in MASTER.hex()
    assert MASTER.hex() not in repr(sealer) and fingerprint in repr(sealer)
