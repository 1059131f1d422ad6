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


def _as_nobody(target: Path) -> subprocess.CompletedProcess[str]:
    """CODE run as nobody on ``target`` (skipped when nobody cannot read this checkout)."""
    nobody = pwd.getpwnam("nobody")

    def as_nobody() -> None:
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    done = subprocess.run([SYSTEM_PYTHON, "-c", CODE, str(ROOT), str(target)],
                          capture_output=True, text=True, timeout=60, preexec_fn=as_nobody,
                          check=False)
    if "ModuleNotFoundError" in done.stderr:
        pytest.skip("nobody cannot read this checkout")
    return done


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
        done = _as_nobody(kept)
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
        done = _as_nobody(placed)
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


FD_CODE = """import os, sys
sys.path.insert(0, sys.argv[1])
from ferrohsm.cli.errors import CliExit
from ferrohsm.cli.streams import Output
own = os.open(sys.argv[3], os.O_RDWR)  # opened by this process: close-on-exec, as Python does
path = sys.argv[2].replace("OWN", str(own))
try:
    with Output.open(path, secret=sys.argv[4] == "secret") as out:
        out.commit(b"material")
except CliExit as e:
    print("refused:", e.code, e.message)
else:
    print("written")
"""


def _fd_run(path: str, own: Path, secret: str, pass_fds: tuple[int, ...] = ()) -> str:
    done = subprocess.run([sys.executable, "-c", FD_CODE, str(ROOT), path, str(own), secret],
                          capture_output=True, text=True, timeout=60, check=False,
                          pass_fds=pass_fds)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_descriptor_is_taken_only_when_the_shell_gave_it_writable(tmp_path: Path) -> None:
    """A red team's three ways through the descriptor paths: ``/dev/fd/3`` was the zip app
    launcher's own lock file (unwrapped key material written into it, exit 0); a read-only
    descriptor was found unwritable only after the server acted (exit 5); a secret went to a
    file others may read."""
    own = tmp_path / "launcher.lock"
    own.write_bytes(b"")
    refused = _fd_run("/dev/fd/OWN", own, "secret")
    assert refused.startswith("refused: 3") and "not a descriptor this command was given" in \
        refused and own.read_bytes() == b""
    readonly = tmp_path / "ro.txt"
    readonly.write_bytes(b"old")
    with open(readonly, "rb") as held:
        answer = _fd_run(f"/dev/fd/{held.fileno()}", own, "plain", pass_fds=(held.fileno(),))
    assert answer.startswith("refused: 3") and "not open for writing" in answer
    shared = tmp_path / "shared.log"
    shared.write_bytes(b"")
    shared.chmod(0o644)
    with open(shared, "ab") as given:
        fd = given.fileno()
        assert "a secret goes to no terminal" in _fd_run(f"/dev/fd/{fd}", own, "secret",
                                                         pass_fds=(fd,))
        assert _fd_run(f"/dev/fd/{fd}", own, "plain", pass_fds=(fd,)) == "written"
    assert shared.read_bytes() == b"material"
    assert "no such descriptor is open" in _fd_run("/dev/fd/57", own, "plain")


def test_stdout_by_another_name_is_standard_output() -> None:
    """--out /dev/stdout is taken as '-' (main), so a secret never reaches a terminal that
    way either: ``data-key --out /dev/stdout`` printed a plaintext key on a terminal."""
    from ferrohsm.cli.streams import names_stdout
    assert all(names_stdout(p) for p in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"))
    assert not any(names_stdout(p) for p in ("/dev/stderr", "/dev/fd/2", "/proc/1/fd/1",
                                             "stdout", "/srv/dev/stdout"))


def test_a_secret_goes_to_no_terminal_whatever_the_name(tmp_path: Path) -> None:
    """A red team: //dev/stdout, /dev/./stderr or /dev/tty on a terminal took a plaintext data
    key: the check ran for the names the descriptor rule knows only."""
    import pty

    code = """import sys
sys.path.insert(0, sys.argv[1])
from ferrohsm.cli.errors import CliExit
from ferrohsm.cli.streams import Output
try:
    with Output.open(sys.argv[2], secret=True) as out:
        out.commit(b"KEYMATERIAL")
except CliExit as e:
    print("refused:", e.code, e.message, file=sys.stderr)
"""
    for name in ("//dev/stdout", "/dev/./stdout"):
        controller, terminal = pty.openpty()
        try:
            done = subprocess.run([sys.executable, "-c", code, str(ROOT), name], stdout=terminal,
                                  stderr=subprocess.PIPE, text=True, timeout=60, check=False)
            os.set_blocking(controller, False)
            try:
                shown = os.read(controller, 4096)
            except BlockingIOError:
                shown = b""
        finally:
            os.close(controller)
            os.close(terminal)
        assert b"KEYMATERIAL" not in shown and "a secret goes to no terminal" in done.stderr, name


def test_dev_stdout_is_standard_output_for_every_answer(tmp_path: Path) -> None:
    """`audit export --out /dev/stdout > a.json` was refused as a secret to a file others may
    read, where `--out -` wrote it: /dev/stdout is standard output, with its rules."""
    code = """import sys
sys.path.insert(0, sys.argv[1])
from ferrohsm.cli.streams import Output
with Output.open("/dev/stdout", secret=True) as out:
    out.commit(b"exported")
"""
    target = tmp_path / "a.json"
    with open(target, "wb") as redirected:
        done = subprocess.run([sys.executable, "-c", code, str(ROOT)], stdout=redirected,
                              stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == b"exported"
