"""An --out file that exists read-only is refused, as cp and openssl refuse it: the atomic
rename would replace it without the write permission, and a chmod 444 is the operator's own
protection. Run as nobody (root may write anything, and is let to, as cp is)."""

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
CODE = """import sys
sys.path.insert(0, sys.argv[1])
from ferrohsm.cli.errors import CliExit
from ferrohsm.cli.streams import Output
try:
    with Output.open(sys.argv[2]) as out:
        out.commit(b"new")
except CliExit as e:
    print("refused:", e.code, e.message)
else:
    print("written")
"""


def test_a_read_only_output_file_is_refused_not_replaced() -> None:
    base = Path(tempfile.mkdtemp(prefix="ferrohsm-out-"))  # pytest's tmp is root's alone
    try:
        nobody = pwd.getpwnam("nobody")
        base.chmod(0o755)
        folder = base / "out"
        folder.mkdir()
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        kept = folder / "keep.sig"
        kept.write_bytes(b"old")
        os.chown(kept, nobody.pw_uid, nobody.pw_gid)
        kept.chmod(0o444)

        def as_nobody() -> None:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
        done = subprocess.run([SYSTEM_PYTHON, "-c", CODE, str(ROOT), str(kept)],
                              capture_output=True, text=True, timeout=60, preexec_fn=as_nobody,
                              check=False)
        if "ModuleNotFoundError" in done.stderr:
            pytest.skip("nobody cannot read this checkout")
        assert done.stdout.startswith("refused: 3 cannot write "), done.stdout + done.stderr
        assert "it exists and is read-only" in done.stdout
        assert kept.read_bytes() == b"old" and sorted(p.name for p in folder.iterdir()) == [
            "keep.sig"]
    finally:
        shutil.rmtree(base, ignore_errors=True)
