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
