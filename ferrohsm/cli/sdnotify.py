"""systemd's readiness protocol (``Type=notify``), on the standard library only.

Why not libsystemd: the zip app must run on any host with python3 and nothing else, and the
protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named by $NOTIFY_SOCKET
(sd_notify(3)); a name starting with ``@`` is in the abstract namespace (a leading NUL byte).
Without $NOTIFY_SOCKET (not under systemd, or not Type=notify) every call does nothing. A failed
send is logged and ignored: telling systemd is never a reason for the server to stop.

The server says READY=1 once it listens and its start-up checks are done, RELOADING=1 (with
MONOTONIC_USEC, as systemd 253's Type=notify-reload requires) when SIGHUP starts a reload and
READY=1 again when it ends, and STOPPING=1 when shutdown begins. While it starts (the start-up
checks read the whole audit log: a minute and more for tens of millions of records) it asks for
more time every 20 s (EXTEND_TIMEOUT_USEC, ``starting``), so the unit's TimeoutStartSec bounds a
start that stopped making progress, not one that is reading a long log; for an hour at most.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("ferrohsm")
ENV = "NOTIFY_SOCKET"
EXTEND_EVERY = 20.0  # seconds between two requests for more start-up time
EXTEND_BY = 60.0  # the time each one asks for (it must come again within it)
EXTEND_AT_MOST = 3600.0  # a start still not done after an hour is left to the unit's timeout


def _address(name: str) -> str | bytes:
    """The socket address: '@name' is abstract (leading NUL), anything else a path."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode("utf-8")
    return name


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"`` ...) as one datagram; False when not under systemd or
    when the send failed (logged)."""
    name = os.environ.get(ENV, "")
    if not name or not (name.startswith(("@", "/"))):
        return False
    payload = "\n".join(fields).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(name))
            sock.sendall(payload)
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", fields[0] if fields else "",
                    exc.strerror or exc)
        return False
    return True


def ready(status: str = "") -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def reloading() -> bool:
    """RELOADING=1 with the CLOCK_MONOTONIC time in microseconds (sd_notify(3))."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1")


@contextmanager
def starting(every: float = EXTEND_EVERY, by: float = EXTEND_BY,
             at_most: float = EXTEND_AT_MOST) -> Iterator[None]:
    """Inside the block, systemd is asked for ``by`` more seconds every ``every`` seconds (for
    ``at_most`` seconds in all): the start-up checks may take minutes on a long audit log. A
    thread only under systemd."""
    if not os.environ.get(ENV, ""):
        yield
        return
    done = threading.Event()

    def extend() -> None:
        deadline = time.monotonic() + at_most
        while not done.wait(every) and time.monotonic() < deadline:
            notify(f"EXTEND_TIMEOUT_USEC={int(by * 1_000_000)}",
                   "STATUS=running the start-up checks (reading the audit log)")
    thread = threading.Thread(target=extend, name="ferrohsm-sd-extend", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
