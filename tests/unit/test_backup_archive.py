"""The backup archive's cipher and format (crypto/archive.py, custody/archive.py)."""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

import pytest

from ferrohsm.cli.backup import PrivateArchive
from ferrohsm.cli.errors import CANNOT_WRITE, CliExit
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


def test_a_file_made_at_the_archive_path_during_the_backup_is_never_replaced(
        tmp_path: Path) -> None:
    """README: the archive "never replaces an existing file", also one that appears while the
    backup runs (another job's archive): it was renamed over."""
    out = tmp_path / "b.fhsmbak"
    with pytest.raises(CliExit) as refused, PrivateArchive(str(out)) as archive:
        out.write_bytes(b"another archive")
        archive.commit(b"FERROHSM-BACKUP 1\n")
    assert refused.value.code == CANNOT_WRITE and "never replaces" in refused.value.message
    assert out.read_bytes() == b"another archive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.fhsmbak"]  # no temporary file


def test_an_archive_is_linked_into_place_private(tmp_path: Path) -> None:
    out = tmp_path / "b.fhsmbak"
    with PrivateArchive(str(out)) as archive:
        archive.commit(b"FERROHSM-BACKUP 1\n")
    assert out.read_bytes() == b"FERROHSM-BACKUP 1\n" and out.stat().st_nlink == 1
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.fhsmbak"]


def test_without_hard_links_the_name_is_still_never_taken_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FAT disk refuses link(2) (EPERM): the archive is still written, and still refused
    over a file made meanwhile."""
    def no_links(src: object, dst: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "b.fhsmbak"
    with PrivateArchive(str(out)) as archive:
        archive.commit(b"archive")
    assert out.read_bytes() == b"archive"
    other = tmp_path / "c.fhsmbak"
    with pytest.raises(CliExit) as refused, PrivateArchive(str(other)) as archive:
        other.write_bytes(b"theirs")
        archive.commit(b"archive")
    assert refused.value.code == CANNOT_WRITE and other.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.fhsmbak", "c.fhsmbak"]


# ---- the contents MAC and the revoked tokens (custody/snapshot.py) ----------------------------

HEADER = {"created_at": "2026-12-06T00:00:00Z", "source_store": "sqlite", "key_count": 0,
          "approval_count": 0, "audit_head": {"seq": 1, "hash": "h"}, "check_value": "c"}
BODY = {"keys": [], "meta": {}, "approvals": [], "audit_head": {"seq": 1, "hash": "h"}}


def test_an_archive_without_revocations_keeps_the_mac_older_builds_wrote() -> None:
    """An archive written before revocations were carried must still verify: its MAC is the
    one of the covered dict as it was then (no member, no count)."""
    from ferrohsm.crypto.recordmac import RecordMac
    from ferrohsm.custody.snapshot import contents_mac
    master = secrets.token_bytes(32)
    old = {"header": HEADER, **BODY}
    assert contents_mac(master, HEADER, BODY) == RecordMac.derive(master).tag(
        b"ferrohsm backup contents v1", archive.canonical(old)).hex()


def test_adding_or_dropping_the_revocations_changes_the_mac() -> None:
    from ferrohsm.custody.snapshot import contents_mac
    master = secrets.token_bytes(32)
    header = {**HEADER, "revoked_token_count": 1}
    body = {**BODY, "revoked_tokens": {"leaked": 4_000_000_000.0}}
    macs = {contents_mac(master, h, b) for h, b in (
        (header, body), (HEADER, BODY), (header, BODY), (HEADER, body),
        (header, {**BODY, "revoked_tokens": {}}),
        ({**header, "revoked_token_count": 0}, {**BODY, "revoked_tokens": {}}),
        (header, {**BODY, "revoked_tokens": {"leaked": 1.0}}))}
    assert len(macs) == 7


def test_the_audit_head_is_read_before_the_key_records(tmp_path: Path) -> None:
    """README: a change the archive's key records miss comes after its audit head, so the
    source log after that head holds every change the archive lacks. Here a change is
    recorded while the records are being read (as a concurrent revoke would be)."""
    from ferrohsm.audit.chain import AuditEvent
    from ferrohsm.audit.sinks import FileSink
    from ferrohsm.custody.snapshot import take_archive
    from ferrohsm.store.memory import MemoryStore

    sink = FileSink(tmp_path / "audit", secrets.token_bytes(32))
    sink.append(AuditEvent(actor="a", role="administrator", action="key.create", message="made",
                           outcome="success"))
    during: list[int] = []

    class ChangedMeanwhile(MemoryStore):
        def list(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            during.append(sink.append(AuditEvent(actor="b", role="administrator",
                                                 action="key.revoke", outcome="success",
                                                 message="meanwhile"))["seq"])
            return super().list(*args, **kwargs)  # type: ignore[arg-type]

    master = secrets.token_bytes(32)
    from ferrohsm.crypto.recordmac import RecordMac
    written = take_archive(ChangedMeanwhile(RecordMac.derive(master)), None, sink, master, BackupKey.derive(master),
                           "memory", NoRevocations(), lambda _approval: True)
    sink.close()
    assert during and written.header["audit_head"]["seq"] < min(during)


class NoRevocations:
    def entries(self, now: float) -> dict[str, float]:
        return {}


def test_a_witness_that_cannot_be_looked_at_does_not_fail_a_finished_restore() -> None:
    """The note comes after the restore: an unreadable witness path (a stale mount, EACCES;
    here a name too long) raised "unexpected OSError" over a store fully restored."""
    from dataclasses import replace

    from ferrohsm.cli.backup import _witness_note
    from ferrohsm.config import Config
    config = Config()
    unreadable = replace(config, audit=replace(config.audit, witness="file:/tmp/" + "w" * 300))
    assert "could not be read" in _witness_note(unreadable)
    assert _witness_note(config) == ""


def test_a_wrong_separate_backup_key_may_also_be_an_altered_header() -> None:
    """The header is authenticated with the body: a wrong key and an edited key id cannot be
    told apart, so the message names both."""
    key = BackupKey.separate(secrets.token_bytes(32))
    data = archive.write({"key_count": 0}, {"keys": []}, key)
    with pytest.raises(ArchiveRefused, match=r"wrong backup key \(or the archive's header was "
                                             r"altered\)"):
        archive.read(data, BackupKey.separate(secrets.token_bytes(32)))
