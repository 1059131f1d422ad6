"""Start-up on a data directory it cannot use: one configuration error naming the path and the
operation, never "unexpected PermissionError"."""

from __future__ import annotations

import errno
import os
import stat
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


def test_every_directory_made_for_the_data_is_private(tmp_path: Path) -> None:
    """The PostgreSQL store makes only the audit folder inside the data directory: the data
    directory made on the way must be 0700 too, whatever the umask."""
    old = os.umask(0o022)
    try:
        wiring.ensure_private_dir(tmp_path / "node-a" / "audit")
    finally:
        os.umask(old)
    for made in (tmp_path / "node-a", tmp_path / "node-a" / "audit"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made


def test_pin_cpu_outside_the_allowed_cores_names_the_setting_and_the_cores(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Not "cannot os.sched_setaffinity a file of the data directory (in _serve)"."""
    from ferrohsm.cli import serve
    from ferrohsm.config import load_config
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 5})
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cores: pytest.fail("pinned"))
    config = load_config(None, env={"FERROHSM_SERVER_PIN_CPU": "999"})
    with pytest.raises(ConfigError) as info:
        serve.pin_to(config)
    assert info.value.message == ("<defaults>: [server].pin_cpu = 999: this process may run on "
                                  "cores 0-2, 5, and 999 is not one of them")


def test_pin_cpu_the_kernel_refuses_is_a_configuration_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ferrohsm.cli import serve
    from ferrohsm.config import load_config

    def refuse(pid: int, cores: object) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    with pytest.raises(ConfigError, match=r"\[server\]\.pin_cpu = 3: this process may run on "
                       r"core 3, and 3 cannot be taken \(Invalid argument\)") as info:
        serve.pin_to(load_config(None, env={"FERROHSM_SERVER_PIN_CPU": "3"}))
    assert "(in " not in info.value.message
