"""A full disk under standard output or an --out file: one line naming the output and its cause,
exit 3 (as the README promises), never "unexpected OSError". Commands that need no server run
in-process with a stdout that fails like /dev/full; tests/integration/test_cli_habits.py runs the
client commands as new processes with their stdout on /dev/full itself."""

from __future__ import annotations

import errno
import io
import json
import sys
from pathlib import Path
from unittest import mock

import pytest

from ferrohsm.cli.errors import CANNOT_WRITE
from ferrohsm.cli.main import main
from ferrohsm.cli.streams import Output


class FullDisk(io.RawIOBase):
    """A device that takes nothing: every write fails with ENOSPC, like /dev/full."""

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def run_on_full_disk(*argv: str) -> tuple[int, str]:
    stdout = io.TextIOWrapper(io.BufferedWriter(FullDisk()), encoding="utf-8")
    stderr = io.StringIO()
    with mock.patch.multiple(sys, stdout=stdout, stderr=stderr):
        code = main(list(argv))
    return code, stderr.getvalue()


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("argv", [("man",), ("completion", "bash"), ("--help",),
                                  ("keys", "list", "--help")])
def test_a_full_stdout_is_one_line_and_exit_3(argv: tuple[str, ...]) -> None:
    code, err = run_on_full_disk(*argv)
    assert code == CANNOT_WRITE
    assert one_line(err) == \
        "ferrohsm: cannot write standard output: No space left on device (ENOSPC)"


def test_audit_report_on_a_full_stdout(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text(json.dumps({"seq": 1, "ts": "2026-01-01T00:00:00Z", "action": "key.create",
                               "outcome": "success", "actor": "a"}) + "\n")
    code, err = run_on_full_disk("audit", "report", str(log))
    assert code == CANNOT_WRITE and "cannot write standard output" in one_line(err)


def test_an_out_device_that_fails_at_write_time_is_said_once(tmp_path: Path) -> None:
    """A device opens fine and fails only when written (/dev/full); the error of the close that
    follows must not replace the one line."""
    out = Output("/dev/full", secret=False, binary=True)
    out._fh = io.BufferedWriter(FullDisk())  # what _open_file gives for a device
    with pytest.raises(Exception) as caught, out:
        out.commit(b"signature")
    assert getattr(caught.value, "code", None) == CANNOT_WRITE
    assert str(caught.value) == "cannot write /dev/full: No space left on device (ENOSPC)"
