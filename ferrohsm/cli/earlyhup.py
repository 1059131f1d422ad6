"""SIGHUP while a server is still starting: noted, then delivered once it can reload.

A SIGHUP's default action ends the process. A server starting reads its whole audit log
(seconds on a large one), and `systemctl reload`, a certificate renewal hook or configuration
management may send SIGHUP meanwhile: with ``processes = N`` the parent forwards it to a child
still starting (one restarted after a crash, or the second of the group, which starts after
the first is ready), and each reload then killed that child again, its restart delay doubling.
So from its first steps a server process holds SIGHUP (``hold``), and ``install`` puts the
reload handler in place and hands it a SIGHUP that came meanwhile: the reload is done late,
never lost, and nothing dies of it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

SERVERS = ("serve", "quickstart")  # the commands that start a server (and hold SIGHUP)
LAUNCHER_NOTED = "FERROHSM_LAUNCHER_SIGHUP"  # set by deploy/zipapp_main.py's own early hold
_pending = [False]  # a SIGHUP arrived while held (a list: the handler sets it in place)


def hold() -> None:
    """Until ``install``: a SIGHUP is noted, not fatal. Main thread only (signal handlers).
    Held already (by the launcher, ferrohsm/__main__.py): a SIGHUP noted since stays noted."""
    if signal.getsignal(signal.SIGHUP) is not _note:
        _pending[0] = False
        signal.signal(signal.SIGHUP, _note)
    if os.environ.pop(LAUNCHER_NOTED, None):  # noted by the zip app's launcher before us
        _pending[0] = True


def _note(signum: int, frame: Any) -> None:
    _pending[0] = True


def install(handler: Callable[[int, Any], Any]) -> None:
    """``handler`` for SIGHUP from now; one noted while held is sent to it now."""
    signal.signal(signal.SIGHUP, handler)
    if _pending[0]:
        _pending[0] = False
        os.kill(os.getpid(), signal.SIGHUP)
