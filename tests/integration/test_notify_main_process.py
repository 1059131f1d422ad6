"""systemd hears from the service's main process, however it serves: sealed behind split
knowledge, and as the parent of ``processes = N``. The shipped unit says ``Type=notify`` and
``NotifyAccess=main``: a READY=1 from anyone else is ignored, the start times out and systemd
restarts the service (losing the custodians' unseal progress, for a sealed one)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from custodykit import Home, Server
from notifykit import Notifications


def expect(notes: Notifications, pid: int, field: str) -> dict[str, str]:
    fields, sender, _ = notes.next(timeout=30)
    assert fields.get(field) is not None, fields
    assert sender == pid, (fields, sender, pid)  # the main process, never a child
    return fields


def stop(server: Server | None) -> None:
    """A failed test leaves no server behind (a group's children stop with their parent)."""
    if server is not None and server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


def nothing_more(notes: Notifications) -> None:
    try:
        fields, sender, _ = notes.next(timeout=1.5)
    except TimeoutError:
        return
    raise AssertionError(f"an unexpected notification from pid {sender}: {fields}")


def test_a_sealed_server_is_ready_when_listening_and_takes_traffic_once_unsealed(
        tmp_path: Path) -> None:
    home = Home(tmp_path)
    shares = home.init(2, 2)
    notes = Notifications()
    server = None
    try:
        server = home.serve(env=home.env(NOTIFY_SOCKET=notes.name))
        pid = server.proc.pid
        ready = expect(notes, pid, "READY")
        assert "sealed" in ready["STATUS"]
        assert server.call("GET", "/readyz")[0] == 503  # up, but not for traffic yet
        server.unseal(shares)
        assert expect(notes, pid, "STATUS")["STATUS"].startswith("unsealed")
        deadline = time.monotonic() + 10
        while server.call("GET", "/readyz")[0] != 200:
            assert time.monotonic() < deadline, server.call("GET", "/readyz")
            time.sleep(0.1)
        server.proc.send_signal(signal.SIGTERM)
        expect(notes, pid, "STOPPING")
        assert server.proc.wait(30) == 0
    finally:
        notes.close()
        stop(server)


def test_a_group_of_processes_notifies_from_its_parent_only(tmp_path: Path) -> None:
    home = Home(tmp_path, store="sqlite", shamir=False)
    home.config.write_text(home.config.read_text().replace("[server]\n",
                                                          "[server]\nprocesses = 2\n"))
    notes = Notifications()
    server = None
    try:
        server = home.serve(env=home.env(NOTIFY_SOCKET=notes.name))
        pid = server.proc.pid
        assert "2 processes" in expect(notes, pid, "READY")["STATUS"]
        nothing_more(notes)  # the children say nothing
        server.proc.send_signal(signal.SIGHUP)
        expect(notes, pid, "RELOADING")
        expect(notes, pid, "READY")
        nothing_more(notes)
        server.proc.send_signal(signal.SIGTERM)
        expect(notes, pid, "STOPPING")
        assert server.proc.wait(60) == 0
        nothing_more(notes)
    finally:
        notes.close()
        stop(server)
