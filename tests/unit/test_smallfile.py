"""``read_at_most``: no file a setting or a flag names is trusted to be small."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ferrohsm.smallfile import read_at_most


def test_a_file_within_the_limit_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1024)
    assert read_at_most(path, 1024) == b"x" * 1024
    assert read_at_most(path, 1024, regular=True) == b"x" * 1024


def test_a_larger_file_is_refused_by_its_size_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as fh:
        fh.truncate(20 << 30)  # 20 GB that no read could hold, refused by fstat alone
    with pytest.raises(OSError) as info:
        read_at_most(path, 1 << 20)
    assert info.value.errno == errno.EFBIG and str(info.value.strerror).startswith("larger than 1 MiB")


def test_a_device_or_a_pipe_is_read_one_byte_past_the_limit(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info:
        read_at_most("/dev/zero", 4096)
    assert str(info.value.strerror).startswith("larger than 4 KiB")
    with pytest.raises(OSError) as info:
        read_at_most("/dev/zero", 4096, regular=True)
    assert info.value.strerror == "not a regular file"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody writes to it: refused at once, not waited on
    with pytest.raises(OSError) as info:
        read_at_most(fifo, 4096, regular=True)
    assert info.value.strerror == "not a regular file"
    read_end, write_end = os.pipe()  # a pipe (process substitution: --token-file <(…))
    try:
        os.write(write_end, b"short")
        os.close(write_end)
        assert read_at_most(f"/dev/fd/{read_end}", 4096) == b"short"
    finally:
        os.close(read_end)
