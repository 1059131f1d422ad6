"""sd_notify on the standard library: datagrams to a path or an abstract socket, nothing without
NOTIFY_SOCKET, and a failed send that never raises."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferrohsm.cli import sdnotify


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield path, sock


def fields(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


def test_ready_reloading_stopping_to_a_path(monkeypatch: pytest.MonkeyPatch,
                                            path_socket: tuple[str, socket.socket]) -> None:
    path, sock = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sdnotify.ready("listening on port 8443")
    assert fields(sock) == {"READY": "1", "STATUS": "listening on port 8443"}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    got = fields(sock)
    assert got["RELOADING"] == "1"
    assert before <= int(got["MONOTONIC_USEC"]) <= time.clock_gettime_ns(
        time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.stopping()
    assert fields(sock) == {"STOPPING": "1"}


def test_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"ferrohsm-unit-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert fields(sock) == {"READY": "1"}


def test_nothing_without_systemd_and_no_raise_on_failure(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")  # not an address systemd gives
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.stopping() is False  # logged, never raised


def test_a_long_start_asks_for_more_time_until_it_is_done(
        monkeypatch: pytest.MonkeyPatch, path_socket: tuple[str, socket.socket]) -> None:
    """The start-up checks read the whole audit log (minutes, on tens of millions of records):
    the unit's TimeoutStartSec must not kill a start that is making progress."""
    path, sock = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with sdnotify.starting(every=0.05, by=2.0):
        got = fields(sock)
        assert got["EXTEND_TIMEOUT_USEC"] == "2000000" and "start-up checks" in got["STATUS"]
        fields(sock)  # and again
    sock.settimeout(0.3)
    while True:  # at most one more, sent before the block ended; then none
        try:
            sock.recv(4096)
        except TimeoutError:
            break
    with pytest.raises(TimeoutError):
        sock.recv(4096)


def test_extending_stops_after_its_limit_and_does_nothing_without_systemd(
        monkeypatch: pytest.MonkeyPatch, path_socket: tuple[str, socket.socket]) -> None:
    path, sock = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with sdnotify.starting(every=0.05, by=2.0, at_most=0.12):
        time.sleep(0.5)
    sent = 0
    sock.settimeout(0.2)
    while True:
        try:
            sock.recv(4096)
            sent += 1
        except TimeoutError:
            break
    assert 1 <= sent <= 3
    monkeypatch.delenv("NOTIFY_SOCKET")
    with sdnotify.starting(every=0.01):
        time.sleep(0.05)  # no thread, nothing sent
