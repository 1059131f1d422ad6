"""A new SQLite audit database is made whole under a temporary name and linked into place
(audit/sqlitesink.py ``_create_private``): a crash while making it leaves no database, and what
it left is swept by the next opening."""

from __future__ import annotations

import os
import secrets
import sqlite3
from pathlib import Path

import pytest

from ferrohsm.audit.sqlitesink import SQLiteSink


def test_a_new_database_is_in_wal_mode_with_its_tables_before_its_first_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit" / "audit.sqlite3"
    seen: list[tuple[str, list[str]]] = []
    link = os.link

    def watched(src: str, dst: str) -> None:  # what is linked into place: a finished database
        if not dst.endswith("audit.sqlite3"):  # the signing key, made the same way
            return link(src, dst)
        db = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
        try:
            seen.append((db.execute("PRAGMA journal_mode").fetchone()[0], sorted(
                r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'"))))
        finally:
            db.close()
        link(src, dst)
    monkeypatch.setattr(os, "link", watched)
    sink = SQLiteSink(path, secrets.token_bytes(32))
    sink.close()
    assert seen == [("wal", ["audit_log", "audit_meta"])]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in path.parent.iterdir() if "audit.sqlite3" in p.name) == [
        "audit.sqlite3"]


def test_a_failure_before_the_link_leaves_no_database_and_the_next_opening_makes_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit" / "audit.sqlite3"

    link = os.link

    def refused(src: str, dst: str) -> None:
        if not dst.endswith("audit.sqlite3"):
            return link(src, dst)
        raise OSError(28, "No space left on device")
    with monkeypatch.context() as patched:
        patched.setattr(os, "link", refused)
        with pytest.raises(OSError, match="No space left"):
            SQLiteSink(path, secrets.token_bytes(32))
    assert not path.exists()
    (path.parent / "audit.sqlite3.new-999999").write_bytes(b"what a kill left")  # swept
    (path.parent / "audit.sqlite3.new-999999-wal").write_bytes(b"")
    (path.parent / "audit.sqlite3.new-copy").write_bytes(b"an operator's file: kept")
    sink = SQLiteSink(path, secrets.token_bytes(32))
    sink.close()
    assert sorted(p.name for p in path.parent.iterdir() if "audit.sqlite3" in p.name) == [
        "audit.sqlite3", "audit.sqlite3.new-copy"]
