"""No core dump, and no other process of the same user reading this one's memory.

A FerroHSM process holds the master key (or the key rebuilt from custodians' shares), the audit
HMAC key, the token secret and unsealed key material for as long as it runs; a CLI command holds
a decrypted plaintext or an unwrapped key for a moment. A crash in native code (OpenSSL, the
kernel's io_uring interface) or a stray SIGSEGV/SIGABRT would otherwise let the kernel write all
of it to a core file or hand it to systemd-coredump, outside the 0700 data directory; and any
process of the same user could read ``/proc/PID/mem`` and ``/proc/PID/environ`` (where a secret
given as an environment variable stays for the process's life, whatever ``os.environ`` says).

So every command starts with its core-size limit at zero and, on Linux, the process marked not
dumpable (``PR_SET_DUMPABLE`` 0): the kernel then writes no core whatever the limit or the core
pattern (a pipe to systemd-coredump included), makes its ``/proc`` entries root's and refuses
ptrace to same-user processes without CAP_SYS_PTRACE. (The hard limit is left alone: code that
could raise the soft one could as well undo the mark, so lowering it would protect nothing, and
it would stay lowered in a test process that runs commands in-process.) A program the process
executes (the span exporter child) starts dumpable again, as exec makes every program; it holds
none of these secrets. Reading a server's ``/proc/PID/fd`` or profiling it with py-spy now
takes root (or CAP_SYS_PTRACE).
"""

from __future__ import annotations

import resource
import sys

PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def forbid_core_dumps() -> None:
    """Best effort where the platform has no such control; never an error for the command."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    except (OSError, ValueError):
        pass
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        except (ImportError, OSError, AttributeError):  # no ctypes, no libc with prctl
            pass
