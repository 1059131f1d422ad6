"""An --out file that exists read-only is refused, as cp and openssl refuse it: the atomic
rename would replace it without the write permission, and a chmod 444 is the operator's own
protection. Run as nobody (root may write anything, and is let to, as cp is)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"  # nobody cannot run an interpreter under root's home
AS_NOBODY = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON),
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


@AS_NOBODY
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


@AS_NOBODY
def test_a_writable_file_in_a_folder_that_takes_no_new_file_is_written_in_place() -> None:
    """A log an administrator placed for this user in a folder only root may write: the atomic
    path needs a temporary file beside it and refused; a shell's redirection writes it."""
    base = Path(tempfile.mkdtemp(prefix="ferrohsm-out-"))
    try:
        nobody = pwd.getpwnam("nobody")
        base.chmod(0o755)
        placed = base / "sig.out"
        placed.write_bytes(b"an older and longer content")
        os.chown(placed, nobody.pw_uid, nobody.pw_gid)

        def as_nobody() -> None:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
        done = subprocess.run([SYSTEM_PYTHON, "-c", CODE, str(ROOT), str(placed)],
                              capture_output=True, text=True, timeout=60, preexec_fn=as_nobody,
                              check=False)
        if "ModuleNotFoundError" in done.stderr:
            pytest.skip("nobody cannot read this checkout")
        assert done.stdout.strip() == "written", done.stdout + done.stderr
        assert placed.read_bytes() == b"new" and sorted(p.name for p in base.iterdir()) == [
            "sig.out"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


STDOUT_CODE = """import sys
sys.path.insert(0, sys.argv[1])
from ferrohsm.cli.streams import Output
with Output.open(sys.argv[2]) as out:
    out.commit(b"signature")
"""


@pytest.mark.parametrize("path", ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"])
def test_the_shells_own_stdout_is_written_through_never_replaced(path: str,
                                                                tmp_path: Path) -> None:
    """``--out /dev/stdout | wc -c`` was refused (the pipe resolved to 'pipe:[N]'), and
    ``--out /dev/stdout >> app.log`` replaced app.log through a temporary file."""
    piped = subprocess.run([sys.executable, "-c", STDOUT_CODE, str(ROOT), path],
                           capture_output=True, timeout=60, check=False)
    assert piped.returncode == 0 and piped.stdout == b"signature", piped.stderr
    log = tmp_path / "app.log"
    log.write_bytes(b"previous log line\n")
    with open(log, "ab") as appended:
        done = subprocess.run([sys.executable, "-c", STDOUT_CODE, str(ROOT), path],
                              stdout=appended, stderr=subprocess.PIPE, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert log.read_bytes() == b"previous log line\nsignature"
