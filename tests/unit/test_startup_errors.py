"""Start-up on a data directory it cannot use: one configuration error naming the path and the
operation, never "unexpected PermissionError"."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ferrohsm import app as wiring
from ferrohsm.domain.errors import ConfigError


def test_read_only_data_directory_names_the_path_and_the_chmod(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: object, mode: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
    monkeypatch.setattr(os, "chmod", refuse)
    with pytest.raises(ConfigError) as info:
        wiring.ensure_private_dir(tmp_path)
    assert str(tmp_path) in info.value.message and "chmod" in info.value.message
    assert "EPERM" in info.value.message and "\n" not in info.value.message


def test_data_directory_that_cannot_be_made_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=f"cannot create data directory {blocker}/data"):
        wiring.ensure_private_dir(blocker / "data")


def test_any_start_up_os_error_names_the_path_and_the_operation(tmp_path: Path) -> None:
    missing = tmp_path / "audit" / "audit-000001.jsonl"

    def open_segment() -> None:
        os.open(missing, os.O_RDONLY)
    try:
        open_segment()
    except OSError as exc:
        error = wiring.startup_failure(exc)
    assert error.message == (f"cannot os.open {missing} (in open_segment): "
                             "No such file or directory (ENOENT)")
