"""The offline tools read a line at most 1 MiB at a time: a file that is not a log (/dev/zero,
a sparse file of gigabytes with no newline) is a clear exit 2, never a process that reads it
all into memory until it is killed."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from ferrohsm.audit import report, verify
from ferrohsm.audit.offline import MAX_LINE, VerifyInputError, file_lines


def test_a_line_longer_than_the_cap_is_refused_without_reading_the_rest(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.jsonl"
    with open(sparse, "wb") as f:
        f.truncate(8 * MAX_LINE)  # no newline anywhere
    with pytest.raises(VerifyInputError, match="longer than 1 MiB"):
        next(file_lines(str(sparse)))
    ok = tmp_path / "ok.jsonl"
    ok.write_bytes(b"x" * (MAX_LINE - 1) + b"\n" + b"y\n")
    assert [len(line) for line in file_lines(str(ok))] == [MAX_LINE, 2]


def test_verify_and_report_say_so_with_exit_2(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "hmac.key"
    key.write_bytes(base64.b64encode(os.urandom(32)))
    key.chmod(0o600)
    assert verify.main(["/dev/zero", "--no-checkpoints", "--hmac-key-file", str(key)]) == 2
    assert report.report_main(["/dev/zero"]) == 2
    assert capsys.readouterr().err.count("not a FerroHSM audit log") == 2
