"""Reading a file a user named, without trusting it to be small.

``Path.read_bytes()`` on ``/dev/zero``, on a FIFO that never ends or on a file of many gigabytes
reads until memory runs out: the process grows until the kernel kills it, deaf to SIGTERM
meanwhile (an outside tester: ``--token-file /dev/zero`` took 24 GB). Every file a setting or a
flag names that the program reads whole goes through ``read_at_most``, which refuses what is
larger than the reader could ever want, with an ``OSError`` whose ``strerror`` says so: callers
already turn an ``OSError`` into their one-line refusal.

``atomic_write`` is the other half: a small file the server keeps (a certificate, an ACME
account, the revoked-token list) is replaced whole or not at all, never left half written by a
crash or a full disk.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

KIB, MIB = 1024, 1024 * 1024


def read_at_most(path: str | os.PathLike[str], limit: int, *, regular: bool = False) -> bytes:
    """The bytes of ``path``, at most ``limit`` of them, else OSError(EFBIG). A regular file
    is judged by its size before anything is read; anything else (a pipe, a device) by reading
    one byte more than ``limit``. With ``regular``, only a regular file is read at all (and a
    FIFO is opened without waiting for a writer, so that it is refused, not waited on)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NONBLOCK if regular else 0)
    with open(os.open(path, flags), "rb") as fh:
        info = os.fstat(fh.fileno())
        if regular and not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            raise OSError(errno.EFBIG, too_large(limit))
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, too_large(limit))
    return data


def too_large(limit: int) -> str:
    """The refusal's words, in the unit a reader thinks in."""
    size = f"{limit // MIB} MiB" if limit % MIB == 0 else f"{limit // KIB} KiB" \
        if limit % KIB == 0 else f"{limit} bytes"
    return f"larger than {size}: not the file this expects"


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """``data`` in a fresh temporary file beside ``path`` (created ``mode``, O_EXCL, no
    symlink followed), fsynced, renamed over ``path``, and the directory fsynced: after a
    crash, the old file or the new one. ``mode`` is set again after creation (the umask may
    have taken bits a 0644 certificate needs)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
