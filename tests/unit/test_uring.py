"""The io_uring fsync (api/uring.py) against the real kernel: a completion per fsync, carried by
an eventfd a selector can wait on, the errno of a failed fsync, and a clean close."""

from __future__ import annotations

import errno
import os
import select
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferrohsm.api import uring


@pytest.fixture
def ring() -> Iterator[uring.FsyncRing]:
    if not uring.available():
        pytest.skip("io_uring is used only on Linux x86-64")
    try:
        opened = uring.FsyncRing()
    except uring.RingError as exc:
        pytest.skip(f"io_uring is not allowed here: {exc}")
    yield opened
    opened.close()


def completed(ring: uring.FsyncRing, timeout: float = 5.0) -> list[tuple[int, int]]:
    readable, _, _ = select.select([ring.fileno()], [], [], timeout)
    assert readable, "no completion within the timeout"
    return ring.completions()


def test_each_fsync_completes_once_with_its_user_data(ring: uring.FsyncRing,
                                                      tmp_path: Path) -> None:
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for n in range(1, 40):  # more than the ring's 8 entries: the rings wrap around
            os.write(fd, b"record\n")
            ring.submit_fsync(fd, n)
            assert completed(ring) == [(n, 0)]
        assert ring.completions() == []  # nothing twice, and the eventfd was cleared
        assert select.select([ring.fileno()], [], [], 0)[0] == []
    finally:
        os.close(fd)


def test_a_failed_fsync_comes_back_as_minus_its_errno(ring: uring.FsyncRing) -> None:
    read_end, write_end = os.pipe()  # fsync of a pipe: EINVAL, from the kernel itself
    try:
        ring.submit_fsync(read_end, 7)
        assert completed(ring) == [(7, -errno.EINVAL)]
    finally:
        os.close(read_end)
        os.close(write_end)


def test_close_releases_every_fd_and_may_be_repeated(ring: uring.FsyncRing) -> None:
    eventfd = ring.fileno()
    ring.close()
    ring.close()
    with pytest.raises(OSError):
        os.fstat(eventfd)


def test_elsewhere_it_says_so_instead_of_guessing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert not uring.available()
    with pytest.raises(uring.RingError, match="x86-64"):
        uring.FsyncRing()
