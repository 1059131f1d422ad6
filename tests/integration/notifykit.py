"""The test's end of systemd's notification protocol (sd_notify(3)): a datagram socket in the
abstract namespace that also learns each sender's pid and uid (SO_PASSCRED), so a test can tell
which process spoke, as systemd does for NotifyAccess=main."""

from __future__ import annotations

import secrets
import socket
import struct


class Notifications:
    """The test's NOTIFY_SOCKET: an abstract-namespace datagram socket with SO_PASSCRED."""

    def __init__(self) -> None:
        self.name = f"@ferrohsm-test-{secrets.token_hex(8)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(b"\0" + self.name[1:].encode())

    def next(self, timeout: float) -> tuple[dict[str, str], int, int]:
        """One datagram's fields and its sender's pid and uid."""
        self.sock.settimeout(timeout)
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = uid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, uid, _gid = struct.unpack("3i", payload[:12])
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        return fields, pid, uid

    def close(self) -> None:
        self.sock.close()
