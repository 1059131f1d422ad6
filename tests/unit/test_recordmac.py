"""The record MAC key: derived from the master key with its own label, independent of sealing.

A stdlib HKDF (RFC 5869) recomputes the derivation, so the label and construction are pinned
independently of the library; a fixed vector pins the tag format stores keep on disk.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest

from ferrohsm.crypto.recordmac import LABEL, TAG_SIZE, RecordMac
from ferrohsm.crypto.seal import Sealer
from ferrohsm.domain.errors import ConfigError

MASTER = bytes(range(32))


def rfc5869_sha256(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 with no salt (a string of HashLen zeros), straight from RFC 5869 section 2."""
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def expected_tag(mac_key: bytes, context: bytes, data: bytes) -> bytes:
    return hmac.new(mac_key, struct.pack(">I", len(context)) + context + data,
                    hashlib.sha256).digest()


def test_the_key_is_hkdf_of_the_master_key_under_its_own_label() -> None:
    derived = rfc5869_sha256(MASTER, LABEL)
    assert RecordMac.derive(MASTER).tag(b"ctx", b"data") == expected_tag(derived, b"ctx", b"data")
    assert derived != MASTER


def test_a_pinned_vector_keeps_stored_tags_verifiable() -> None:
    tag = RecordMac.derive(MASTER).tag(b"key-record", b'{"id":"x"}')
    assert len(tag) == TAG_SIZE
    assert tag.hex() == "2b6b7594b2af83a75870212471360cc389b9d48b602fbc2dd67430bcae83038c"


def test_the_mac_key_is_neither_the_master_key_nor_the_fingerprint_key() -> None:
    mac = RecordMac.derive(MASTER)
    assert mac.tag(b"c", b"d") != expected_tag(MASTER, b"c", b"d")
    fingerprint = hmac.new(MASTER, b"ferrohsm fingerprint", hashlib.sha256).hexdigest()[:8]
    assert Sealer(MASTER).fingerprint() == fingerprint  # the other use of the master key
    assert mac.tag(b"", b"ferrohsm fingerprint").hex()[:8] != fingerprint


def test_context_and_data_cannot_trade_bytes() -> None:
    mac = RecordMac.derive(MASTER)
    assert mac.tag(b"ab", b"c") != mac.tag(b"a", b"bc")
    assert mac.tag(b"key-record", b"x") != mac.tag(b"format-marker", b"x")


def test_another_master_key_gives_other_tags() -> None:
    other = bytes(31) + b"\x01"
    assert RecordMac.derive(MASTER).tag(b"c", b"d") != RecordMac.derive(other).tag(b"c", b"d")


def test_tags_repeat_for_the_same_input() -> None:
    mac = RecordMac.derive(MASTER)
    assert mac.tag(b"c", b"d") == mac.tag(b"c", b"d")  # the keyed object is copied, not reused


@pytest.mark.parametrize("master", [b"", b"x" * 31, b"x" * 33, "x" * 32])
def test_a_master_key_of_the_wrong_size_is_a_config_error(master: object) -> None:
    with pytest.raises(ConfigError):
        RecordMac.derive(master)  # type: ignore[arg-type]  # wrong types are the point
    with pytest.raises(ConfigError):
        RecordMac(master)  # type: ignore[arg-type]  # wrong types are the point


def test_repr_shows_nothing_of_the_key() -> None:
    mac = RecordMac.derive(MASTER)
    text = repr(mac) + str(mac)
    assert rfc5869_sha256(MASTER, LABEL).hex()[:8] not in text and MASTER.hex()[:8] not in text
