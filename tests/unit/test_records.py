"""The record codec on its own: the exact stored layout, and every near-miss of it refused.

The conformance suite proves each store uses the codec; this pins what the codec accepts: only
its own envelope, byte for byte, with the MAC in lowercase hex over the record bytes as stored.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.errors import IntegrityError, StoreError
from ferrohsm.domain.model import Key, key_to_record
from ferrohsm.store.records import RECORD_CONTEXT, RecordCodec, has_mac

MAC = RecordMac.derive(bytes(range(32)))
CODEC = RecordCodec(MAC)
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def make_key() -> Key:
    return lc.new_key(key_id=str(uuid.uuid4()), name="k", description="private words",
                      algorithm="aes-256-gcm", usage="encrypt", tags=("pci",),
                      sealed=b"\x01sealed", now=NOW, actor="alice")


def canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def test_the_stored_layout() -> None:
    key = make_key()
    stored = CODEC.encode(key)
    record = canonical(key_to_record(key))
    mac = MAC.tag(RECORD_CONTEXT, record).hex().encode()
    assert stored == b'{"format":2,"mac":"' + mac + b'","record":' + record + b"}"
    assert CODEC.decode(key.id, stored) == key == CODEC.decode(key.id, stored.decode())
    assert has_mac(stored) and not has_mac(record)


def variants(stored: bytes) -> dict[str, tuple[bytes | str, str]]:
    """Near-misses of a valid stored record, and the problem each must report."""
    doc = json.loads(stored)
    return {
        "uppercase-mac": (stored.replace(doc["mac"].encode(), doc["mac"].upper().encode()),
                          "mac_mismatch"),
        "pretty-printed": (json.dumps(doc, indent=1).encode(), "layout_changed"),
        "keys-reordered": (json.dumps({"record": doc["record"], "format": 2,
                                       "mac": doc["mac"]}).encode(), "layout_changed"),
        "trailing-bytes": (stored + b" ", "mac_mismatch"),
        "truncated": (stored[:-2] + b"}", "mac_mismatch"),
        "short-mac": (stored.replace(doc["mac"].encode(), doc["mac"][:-2].encode()),
                      "mac_mismatch"),
        "non-ascii": (stored.decode().replace("private", "prïvate"), "mac_mismatch"),
        "record-reformatted": (stored.replace(b'"record":{', b'"record": {'), "mac_mismatch"),
        "bare-record": (canonical(doc["record"]), "mac_missing"),
        "empty": (b"", "mac_missing"),
    }


@pytest.mark.parametrize("variant", sorted(variants(CODEC.encode(make_key()))))
def test_near_misses_are_integrity_errors_that_show_no_contents(variant: str) -> None:
    key = make_key()
    data, problem = variants(CODEC.encode(key))[variant]
    with pytest.raises(IntegrityError) as caught:
        CODEC.decode(key.id, data)
    assert caught.value.details == {"key_id": key.id, "problem": problem}
    assert key.id in caught.value.message and "private" not in caught.value.message


def test_another_master_key_does_not_verify() -> None:
    key = make_key()
    other = RecordCodec(RecordMac.derive(bytes(32)))
    with pytest.raises(IntegrityError, match="MAC does not match"):
        other.decode(key.id, CODEC.encode(key))


def test_an_authentic_record_of_another_key_is_refused() -> None:
    key = make_key()
    with pytest.raises(IntegrityError, match="different key"):
        CODEC.decode(str(uuid.uuid4()), CODEC.encode(key))


def test_an_authentic_but_unparsable_record_is_a_store_error() -> None:
    """Only a writer holding the MAC key can make one (a bug, never an attacker)."""
    record = b'{"id":"x"}'
    stored = b'{"format":2,"mac":"' + MAC.tag(RECORD_CONTEXT, record).hex().encode() + \
        b'","record":' + record + b"}"
    with pytest.raises(StoreError, match="corrupted"):
        CODEC.decode(str(uuid.uuid4()), stored)


def test_the_migration_reads_bare_records_without_the_audit_fields() -> None:
    key = make_key()
    old = key_to_record(key)
    del old["audit_seq"], old["audit_hash"]
    assert RecordCodec.decode_unauthenticated(key.id, canonical(old)) == key
    assert RecordCodec.decode_unauthenticated(key.id, canonical(old).decode()) == key


def test_a_value_quoted_in_a_message_keeps_its_quote_when_cut() -> None:
    """A contract tester read ``unknown algorithm 'aaaa…`` (no closing quote, no sign of the
    cut) as the value sent."""
    from ferrohsm.crypto.algorithms import get_algorithm
    from ferrohsm.domain.errors import BadRequest
    from ferrohsm.domain.shown import shown
    assert shown("abc") == "'abc'" and shown("a" * 100) == "'" + "a" * 37 + "…'"
    assert len(shown("a" * 100)) == 40 and shown(10**30, 10) == "10000000…0"
    with pytest.raises(BadRequest) as caught:
        get_algorithm("x" * 100)
    assert "'" + "x" * 37 + "…';" in caught.value.message
