"""What /proc says of a process the tests started (readable by anyone for these fields)."""

from __future__ import annotations

import signal
from pathlib import Path


def catches_sighup(pid: int) -> bool:
    """Whether ``pid`` has a handler for SIGHUP (/proc/PID/status SigCgt)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGHUP - 1) & 1)
    return False
