"""A sink whose write is its COMMIT (SQLite here, PostgreSQL alike) asks the event loop to leave
its writes to the committer thread once a group commit was slow or failed (audit/splitflush.py
``commits_in_write``), and to commit them itself again once they are quick; a sink that writes
now and flushes later (the file sink) never asks."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from ferrohsm.audit import sinkbase
from ferrohsm.audit.chain import AuditEvent
from ferrohsm.audit.filesink import FileSink
from ferrohsm.audit.sqlitesink import SQLiteSink
from ferrohsm.domain.errors import AuditUnavailable


def event() -> AuditEvent:
    return AuditEvent(actor="a", role="service", action="key.encrypt", outcome="success",
                      message="encrypted")


def test_a_slow_or_failed_commit_moves_the_next_ones_off_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = SQLiteSink(tmp_path / "audit.sqlite3", secrets.token_bytes(32))
    try:
        sink.append(event())
        assert not sink.commits_in_write()  # quick: the loop commits
        monkeypatch.setattr(sinkbase, "SLOW_COMMIT", 0.0)  # every commit counts as slow now
        sink.append(event())
        assert sink.commits_in_write()
        monkeypatch.setattr(sinkbase, "SLOW_COMMIT", 60.0)
        sink.append(event())
        assert not sink.commits_in_write()  # quick again: back on the loop

        def refuse(*args: object, **kwargs: object) -> None:
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(sink, "_persist", refuse)
        with pytest.raises(AuditUnavailable):
            sink.append(event())
        assert sink.commits_in_write()  # a failed one too
    finally:
        monkeypatch.undo()
        sink.close()


def test_the_file_sink_always_writes_on_the_loop(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinkbase, "SLOW_COMMIT", 0.0)
    sink = FileSink(tmp_path / "audit", secrets.token_bytes(32))
    try:
        sink.append(event())
        assert not sink.commits_in_write()  # its flush is apart (io_uring, a thread)
    finally:
        sink.close()
