"""Every command's process keeps its secrets out of core files and from same-user /proc
readers (cli/nodump.py): checked in a forked child, which the test process itself is not."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys

import pytest

from ferrohsm.cli.nodump import forbid_core_dumps

PR_GET_DUMPABLE = 3

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux prctl")


def test_a_process_that_forbids_dumps_has_no_core_limit_and_is_not_dumpable() -> None:
    pid = os.fork()
    if pid == 0:  # the child: report by exit status, never return into pytest
        try:
            forbid_core_dumps()
            libc = ctypes.CDLL(None, use_errno=True)
            ok = (resource.getrlimit(resource.RLIMIT_CORE)[0] == 0
                  and libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0)
            os._exit(0 if ok else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_cli_command_that_crashes_leaves_no_core(tmp_path: object) -> None:
    """`ferrohsm`'s main() under a core limit the shell raised, killed by SIGSEGV while it runs: no
    core in its working directory (the kernel's plain `core` pattern is one way it could land;
    a piped one such as systemd-coredump is refused by the same not-dumpable mark)."""
    code = ("import contextlib, os, signal\n"
            "from ferrohsm.cli.main import main\n"
            "with contextlib.suppress(SystemExit):\n"
            "    main(['--version'])\n"
            "os.kill(os.getpid(), signal.SIGSEGV)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), check=False,
                          capture_output=True,
                          preexec_fn=lambda: resource.setrlimit(  # as high as it may go
                              resource.RLIMIT_CORE, (resource.getrlimit(resource.RLIMIT_CORE)[1],) * 2))
    assert proc.returncode == -signal.SIGSEGV
    if resource.getrlimit(resource.RLIMIT_CORE)[1] == 0:
        pytest.skip("this process may not raise the core limit: no core could show anyway")
    assert not [p for p in os.listdir(str(tmp_path)) if p.startswith("core")]
