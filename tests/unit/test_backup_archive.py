"""The backup archive's cipher and format (crypto/archive.py, custody/archive.py)."""

from __future__ import annotations

import secrets

import pytest

from ferrohsm.crypto.archive import BackupKey
from ferrohsm.custody import archive
from ferrohsm.custody.archive import ArchiveRefused
from ferrohsm.domain.errors import ConfigError


def test_the_derived_key_is_stable_and_apart_from_the_other_derived_keys() -> None:
    master = secrets.token_bytes(32)
    a, b = BackupKey.derive(master), BackupKey.derive(master)
    assert a.key_id == b.key_id and a.kind == "derived"
    assert BackupKey.derive(secrets.token_bytes(32)).key_id != a.key_id
    assert BackupKey.separate(master).key_id != a.key_id  # HKDF, not the master key itself
    sealed = a.seal(b"head", b"body")
    assert b.open(b"head", sealed) == b"body"
    assert "derived" in repr(a) and a.key_id not in repr(a)


def test_keys_of_the_wrong_size_are_refused() -> None:
    with pytest.raises(ConfigError):
        BackupKey.separate(b"short")
    with pytest.raises(ConfigError):
        BackupKey.derive(b"\x00" * 31)


def test_an_archive_round_trips_and_names_its_key() -> None:
    key = BackupKey.separate(secrets.token_bytes(32))
    data = archive.write({"key_count": 0}, {"keys": []}, key)
    got = archive.read(data, key)
    assert got.body == {"keys": []}
    assert got.header["backup_key"] == {"kind": "separate", "id": key.key_id}
    assert got.header["format"] == archive.FORMAT


@pytest.mark.parametrize("data,message", [
    (b"", "not a FerroHSM backup archive"),
    (b"FERROHSM-BACKUP 2\n{}\n", "not a FerroHSM backup archive"),
    (b"FERROHSM-BACKUP 1\n{\"format\":1", "truncated"),
    (b"FERROHSM-BACKUP 1\n[1]\n", "header is not valid"),
    (b"FERROHSM-BACKUP 1\n" + b"[" * 50000 + b"\n", "header is not valid"),  # too deep
    (b"FERROHSM-BACKUP 1\n{\"format\":1}\nshort", "truncated"),
])
def test_malformed_archives_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ArchiveRefused, match=message):
        archive.read(data, BackupKey.separate(secrets.token_bytes(32)))


def test_every_flipped_byte_is_refused() -> None:
    key = BackupKey.separate(secrets.token_bytes(32))
    data = archive.write({"key_count": 1}, {"keys": ["x"]}, key)
    for at in range(len(data)):
        tampered = data[:at] + bytes([data[at] ^ 0x80]) + data[at + 1:]
        with pytest.raises(ArchiveRefused):
            archive.read(tampered, key)
