"""systemd's readiness protocol (``Type=notify``), on the standard library only.

Why not libsystemd: the zip app must run on any host with python3 and nothing else, and the
protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named by $NOTIFY_SOCKET
(sd_notify(3)); a name starting with ``@`` is in the abstract namespace (a leading NUL byte).
Without $NOTIFY_SOCKET (not under systemd, or not Type=notify) every call does nothing. A failed
send is logged and ignored: telling systemd is never a reason for the server to stop.

The server says READY=1 once it listens and its start-up checks are done, RELOADING=1 (with
MONOTONIC_USEC, as systemd 253's Type=notify-reload requires) when SIGHUP starts a reload and
READY=1 again when it ends, and STOPPING=1 when shutdown begins.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("ferrohsm")
ENV = "NOTIFY_SOCKET"


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
