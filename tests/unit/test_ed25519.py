"""The offline verifier's own Ed25519 (audit/ed25519.py) and its PEM reader.

Known answers: RFC 8032 section 7.1 (tests/vectors/rfc8032_ed25519.json). Properties: for random
keys and messages it agrees with ``cryptography`` (OpenSSL) on genuine, bit-flipped, re-encoded
and random signatures. Strictness: wrong lengths, non-canonical S, bad point encodings and
small-order public keys are refused.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from ferrohsm.audit.checkpoint import PublicKey, signature_ok, signed_bytes
from ferrohsm.audit.ed25519 import (
    BASE,
    SPKI_PREFIX,
    decode_point,
    encode_point,
    public_key_from_der,
    public_key_from_pem,
    verify,
)
from ferrohsm.crypto.signing import SigningKey

DOCUMENT: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent.parent / "vectors" / "rfc8032_ed25519.json").read_text())
RFC: list[dict[str, Any]] = DOCUMENT["vectors"]
L = 2 ** 252 + 27742317777372353535851937790883648493
P = 2 ** 255 - 19
# The canonical encodings of the eight points of small order that have one with the sign bit clear.
SMALL_ORDER = [bytes.fromhex(h) for h in (
    "0100000000000000000000000000000000000000000000000000000000000000",  # the identity
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
)]


def raw_public(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def openssl_accepts(public: bytes, message: bytes, signature: bytes) -> bool:
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def vector(name: str) -> dict[str, Any]:
    return next(v for v in RFC if v["name"] == name)


def fields(v: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    return (bytes.fromhex(v["public_key"]), bytes.fromhex(v["message"]),
            bytes.fromhex(v["signature"]))


# ---- RFC 8032 section 7.1 ------------------------------------------------------------------------

@pytest.mark.parametrize("v", RFC, ids=lambda v: str(v["name"]))
def test_rfc8032_vectors_verify(v: dict[str, Any]) -> None:
    public, message, signature = fields(v)
    assert verify(public, message, signature)
    assert not verify(public, message + b"\x00", signature)
    assert not verify(public, message, signature[:63] + bytes([signature[63] ^ 0x01]))


def test_rfc8032_vectors_are_the_published_ones() -> None:
    """Typed from the RFC; the secret keys reproduce each public key and signature exactly."""
    assert [v["name"] for v in RFC] == ["TEST 1", "TEST 2", "TEST 3", "TEST 1024",
                                        "TEST SHA(abc)"]
    assert len(bytes.fromhex(vector("TEST 1024")["message"])) == 1023
    for v in RFC:
        key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["secret_key"]))
        assert raw_public(key).hex() == v["public_key"]
        assert key.sign(bytes.fromhex(v["message"])).hex() == v["signature"]


def test_the_base_point_encodes_as_published() -> None:
    assert encode_point(BASE).hex() == "58" + "66" * 31  # y = 4/5, x even
    assert decode_point(encode_point(BASE)) is not None


# ---- strictness ----------------------------------------------------------------------------------

def test_wrong_lengths_are_refused() -> None:
    public, message, signature = fields(vector("TEST 2"))
    for bad_public in (public[:31], public + b"\x00", b""):
        assert not verify(bad_public, message, signature)
    for bad_signature in (signature[:63], signature + b"\x00", b""):
        assert not verify(public, message, bad_signature)


def test_s_plus_l_is_refused() -> None:
    """S + L has the same residue: accepting it would make signatures malleable."""
    for v in RFC:
        public, message, signature = fields(v)
        s = int.from_bytes(signature[32:], "little")
        malleated = signature[:32] + (s + L).to_bytes(32, "little")
        assert not verify(public, message, malleated)
        assert not openssl_accepts(public, message, malleated)


def non_canonical_encodings() -> list[bytes]:
    """y >= p (p, p + 1, 2^255 - 1), and "-0" (y = 1 with the sign bit set: x = 0, negated)."""
    return [(P + n).to_bytes(32, "little") for n in (0, 1, 2 ** 255 - 1 - P)] + \
        [(1 | 1 << 255).to_bytes(32, "little"), (P - 1 | 1 << 255).to_bytes(32, "little")]


def a_y_with_no_point() -> bytes:
    """The encoding of the smallest y for which no x is on the curve."""
    y = 2
    while decode_point(y.to_bytes(32, "little")) is not None:
        y += 1
    return y.to_bytes(32, "little")


def test_bad_point_encodings_are_refused_for_the_key_and_for_r() -> None:
    public, message, signature = fields(vector("TEST 3"))
    for bad in [*non_canonical_encodings(), a_y_with_no_point()]:
        assert decode_point(bad) is None, bad.hex()
        assert not verify(bad, message, signature)
        assert not verify(public, message, bad + signature[32:])


def test_small_order_public_keys_are_refused() -> None:
    """With A of small order, R = [S]B makes (R, S) pass [S]B = R + [k]A for every message."""
    forged = encode_point(BASE) + (1).to_bytes(32, "little")  # R = B, S = 1
    for point in SMALL_ORDER:
        assert decode_point(point) is not None
        for message in (b"", b"any message at all"):
            assert not verify(point, message, forged)


# ---- agreement with cryptography (OpenSSL) -------------------------------------------------------

KEYS = st.binary(min_size=32, max_size=32).map(ed25519.Ed25519PrivateKey.from_private_bytes)


@settings(max_examples=40, deadline=None)
@given(key=KEYS, message=st.binary(max_size=300))
def test_genuine_signatures_verify(key: ed25519.Ed25519PrivateKey, message: bytes) -> None:
    signature = key.sign(message)
    assert verify(raw_public(key), message, signature)


@settings(max_examples=60, deadline=None)
@given(key=KEYS, message=st.binary(max_size=100), bit=st.integers(0, 511))
def test_flipped_bits_agree_with_openssl(key: ed25519.Ed25519PrivateKey, message: bytes,
                                         bit: int) -> None:
    signature = bytearray(key.sign(message))
    signature[bit // 8] ^= 1 << (bit % 8)
    public = raw_public(key)
    assert verify(public, message, bytes(signature)) is False
    assert openssl_accepts(public, message, bytes(signature)) is False


@settings(max_examples=30, deadline=None)
@given(key=KEYS, message=st.binary(min_size=1, max_size=100), other=st.binary(max_size=100))
def test_other_messages_and_keys_agree_with_openssl(key: ed25519.Ed25519PrivateKey,
                                                   message: bytes, other: bytes) -> None:
    signature = key.sign(message)
    public = raw_public(key)
    if other != message:
        assert not verify(public, other, signature)
    stranger = raw_public(ed25519.Ed25519PrivateKey.generate())
    assert verify(stranger, message, signature) == openssl_accepts(stranger, message, signature)


@settings(max_examples=40, deadline=None)
@given(public=st.binary(min_size=32, max_size=32), signature=st.binary(min_size=64, max_size=64))
def test_random_bytes_agree_with_openssl(public: bytes, signature: bytes) -> None:
    assert verify(public, b"m", signature) == openssl_accepts(public, b"m", signature)


# ---- the PEM and DER reader ----------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(key=KEYS)
def test_pem_from_cryptography_reads_back(key: ed25519.Ed25519PrivateKey) -> None:
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    assert public_key_from_pem(pem) == raw_public(key)
    der = base64.b64decode(b"".join(pem.splitlines()[1:-1]))
    assert der == SPKI_PREFIX + raw_public(key)
    assert public_key_from_der(der) == raw_public(key)


def pem_of(der: bytes, label: str = "PUBLIC KEY") -> bytes:
    body = base64.b64encode(der).decode()
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode()


def test_other_keys_and_garbage_are_refused_without_echo() -> None:
    raw = raw_public(ed25519.Ed25519PrivateKey.generate())
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    not_ed25519 = [p256, pem_of(SPKI_PREFIX + raw + b"\x00"), pem_of(SPKI_PREFIX[:-1] + raw),
                   pem_of(bytes([SPKI_PREFIX[0] ^ 1]) + SPKI_PREFIX[1:] + raw)]
    not_pem = [b"", raw, b"\xff\xfe", pem_of(SPKI_PREFIX + raw, "PRIVATE KEY"),
               pem_of(SPKI_PREFIX + raw).replace(b"\n-----END", b"!\n-----END"),
               pem_of(SPKI_PREFIX + raw).split(b"-----END")[0]]
    for data, message in [(d, "not an Ed25519 public key") for d in not_ed25519] + \
                         [(d, "not a PEM public key") for d in not_pem]:
        with pytest.raises(ValueError) as caught:
            public_key_from_pem(data)
        assert str(caught.value) == message


# ---- checkpoints: the server's signature, checked without cryptography ---------------------------

def test_a_server_checkpoint_verifies_with_the_stdlib_key() -> None:
    signer = SigningKey.load(SigningKey.generate_pem())
    checkpoint: dict[str, Any] = {"v": 1, "type": "ferrohsm.audit.checkpoint", "log_id": "x",
                                  "seq": 3, "head_hash": "ab" * 32, "ts": "2026-01-01T00:00:00Z",
                                  "key_fingerprint": signer.public.fingerprint()}
    checkpoint["sig"] = base64.b64encode(signer.sign(signed_bytes(checkpoint))).decode()
    key = PublicKey.from_pem(signer.public.pem())
    assert key.fingerprint() == signer.public.fingerprint()
    assert signature_ok(checkpoint, key) and signature_ok(checkpoint, signer.public)
    for tampered in (dict(checkpoint, seq=4), dict(checkpoint, sig="!"),
                     {k: v for k, v in checkpoint.items() if k != "sig"}):
        assert not signature_ok(tampered, key)
        assert not signature_ok(tampered, signer.public)
