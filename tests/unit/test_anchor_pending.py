"""A new audit signing key is put in place only once its first checkpoint is durable
(audit/anchor.py), so a key in place always has checkpoints: what a PostgreSQL node's start-up
check counts on to tell a first start cut short from checkpoints deleted."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ferrohsm.audit.anchor import KEY_FILE, PENDING, Anchor
from ferrohsm.domain.errors import AuditUnavailable


def sign(anchor: Anchor) -> None:
    anchor.sign(log_id="log", seq=1, head_hash="00" * 32, ts=datetime.now(UTC))


def test_the_key_is_pending_until_its_first_checkpoint_then_in_place(tmp_path: Path) -> None:
    anchor = Anchor(str(tmp_path))
    key, pending = tmp_path / KEY_FILE, tmp_path / (KEY_FILE + PENDING)
    assert pending.exists() and not key.exists()
    assert oct(pending.stat().st_mode & 0o777) == "0o600"
    sign(anchor)
    assert key.exists() and not pending.exists()
    again = Anchor(str(tmp_path))  # the same key, in place, verifies what it signed
    assert again.public_key.fingerprint() == anchor.public_key.fingerprint()
    last = again.last()
    assert last is not None and again.verify_own(last)


def test_a_start_that_never_signed_leaves_a_key_the_next_start_uses(tmp_path: Path) -> None:
    first = Anchor(str(tmp_path))  # then killed: no checkpoint
    second = Anchor(str(tmp_path))
    assert second.public_key.fingerprint() == first.public_key.fingerprint()
    sign(second)
    assert (tmp_path / KEY_FILE).exists()


def test_a_kill_between_the_first_checkpoint_and_the_rename_is_finished_at_start(
        tmp_path: Path) -> None:
    anchor = Anchor(str(tmp_path))
    pending = tmp_path / (KEY_FILE + PENDING)
    kept = pending.read_bytes()
    sign(anchor)
    os.rename(tmp_path / KEY_FILE, pending)  # as if killed before the key was put in place
    assert pending.read_bytes() == kept
    again = Anchor(str(tmp_path))
    assert (tmp_path / KEY_FILE).read_bytes() == kept and not pending.exists()
    last = again.last()
    assert last is not None and again.verify_own(last)


def test_processes_sharing_the_directory_share_the_pending_key(tmp_path: Path) -> None:
    one, two = Anchor(str(tmp_path)), Anchor(str(tmp_path))
    assert one.public_key.fingerprint() == two.public_key.fingerprint()
    sign(one)
    sign(two)  # its key is in place already: nothing replaced
    assert (tmp_path / KEY_FILE).exists() and not list(tmp_path.glob("*" + PENDING))


def test_a_key_lost_after_checkpoints_is_still_refused(tmp_path: Path) -> None:
    sign(Anchor(str(tmp_path)))
    (tmp_path / KEY_FILE).unlink()
    with pytest.raises(AuditUnavailable, match="is missing"):
        Anchor(str(tmp_path))
    assert not (tmp_path / KEY_FILE).exists() and not list(tmp_path.glob("*" + PENDING))


def test_a_key_put_in_place_by_another_process_meanwhile_is_not_taken_for_lost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes sharing the directory: B finds no key in place, A then signs its first
    checkpoint and puts the pending key in place, B finds checkpoints and no pending key. B
    looks again before calling the key lost (a red team, by reading)."""
    sign(Anchor(str(tmp_path)))  # A, done: the key in place, checkpoints written
    key = str(tmp_path / KEY_FILE)
    real, first = os.path.exists, [True]

    def exists(path: str) -> bool:
        if path == key and first[0]:  # B's first look came before A put the key in place
            first[0] = False
            return False
        return real(path)
    monkeypatch.setattr(os.path, "exists", exists)
    assert Anchor(str(tmp_path)).public_key is not None and not first[0]
