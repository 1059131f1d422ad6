"""The log line that reports the audit log failing closed says that only a restart resumes
writes: freeing the disk is not enough (an outside tester saw only "No space left on device")."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import pytest

from ferrohsm.audit.chain import AuditEvent
from ferrohsm.audit.filesink import FileSink
from ferrohsm.domain.errors import AuditUnavailable

KEY = b"h" * 32


class FullDiskSink(FileSink):
    fail = False

    def _fsync(self, fd: int) -> None:
        if self.fail:
            raise OSError(errno.ENOSPC, "No space left on device")
        super()._fsync(fd)


def event(n: int) -> AuditEvent:
    return AuditEvent(actor="alice", role="operator", action="key.encrypt", outcome="success",
                      message=f"event {n}")


def restart_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
            and "a restart of the server is required to resume writes" in r.getMessage()]


def test_a_failed_write_that_fails_the_log_closed_says_a_restart_is_needed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = FullDiskSink(tmp_path / "audit", KEY)
    try:
        sink.append(event(1))
        sink.fail = True
        with caplog.at_level(logging.ERROR, logger="ferrohsm.audit"), \
                pytest.raises(AuditUnavailable):
            sink.append(event(2))
        sink.fail = False  # space freed: still refused, and the log said why
        with pytest.raises(AuditUnavailable, match="restart"):
            sink.append(event(3))
    finally:
        sink.close()
    lines = restart_lines(caplog)
    assert len(lines) == 1 and "No space left on device" in lines[0], lines


def test_fail_closed_says_a_restart_is_needed(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    sink = FileSink(tmp_path / "audit", KEY)
    try:
        with caplog.at_level(logging.ERROR, logger="ferrohsm.audit"):
            sink.fail_closed("a rollback could not be recorded")
    finally:
        sink.close()
    lines = restart_lines(caplog)
    assert len(lines) == 1 and "a rollback could not be recorded" in lines[0], lines
    assert "refused (503)" in lines[0]


def test_a_failed_sqlite_write_names_sqlite_s_reason(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Crash tester: the SQLite sink's failures read "OperationalError" in the log and the
    503s, never "database or disk is full" (the file sink says "No space left on device")."""
    import sqlite3

    from ferrohsm.audit.sqlitesink import SQLiteSink

    class FullSQLite(SQLiteSink):
        fail = False

        def _persist(self, events: Any, sync: bool = True) -> Any:
            if self.fail:
                raise sqlite3.OperationalError("database or disk is full")
            return super()._persist(events, sync)

    sink = FullSQLite(tmp_path / "audit.sqlite3", KEY)
    try:
        sink.append(event(1))
        sink.fail = True
        with caplog.at_level(logging.ERROR, logger="ferrohsm.audit"), \
                pytest.raises(AuditUnavailable, match="database or disk is full"):
            sink.append(event(2))
    finally:
        sink.close()
    assert any("database or disk is full" in r.getMessage() for r in caplog.records)
