"""A SQLite file of the data directory that this user cannot read and write (left by a root-run
command) is a data directory problem, exit 2, said as such: not a store failure, exit 1."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"  # nobody cannot run an interpreter under root's home
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON),
                                reason="needs root (to act as nobody) and /usr/bin/python3")


def test_a_file_of_another_owner_is_a_config_error() -> None:
    base = Path(tempfile.mkdtemp(prefix="ferrohsm-owner-"))  # pytest's tmp is root's alone
    try:
        _check(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _check(base: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    base.chmod(0o755)
    data = base / "data"
    data.mkdir(mode=0o700)
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    db = data / "keys.sqlite3"
    db.write_bytes(b"")
    db.chmod(0o600)  # root's
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from ferrohsm.store.sqlitedb import "
            "prepare_file; from ferrohsm.domain.errors import ConfigError\n"
            "try:\n prepare_file(sys.argv[2], 'SQLite database')\n"
            "except ConfigError as e:\n print('ConfigError:', e.message)")

    def as_nobody() -> None:
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    done = subprocess.run([SYSTEM_PYTHON, "-c", code, str(ROOT), str(db)], capture_output=True,
                          text=True, timeout=60, preexec_fn=as_nobody, check=False)
    if "ModuleNotFoundError" in done.stderr:
        pytest.skip("nobody cannot read this checkout")
    assert done.stdout.startswith("ConfigError:"), done.stdout + done.stderr
    assert "cannot be read and written by this user" in done.stdout
