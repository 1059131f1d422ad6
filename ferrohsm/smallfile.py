"""Reading a file a user named, without trusting it to be small.

``Path.read_bytes()`` on ``/dev/zero``, on a FIFO that never ends or on a file of many gigabytes
reads until memory runs out: the process grows until the kernel kills it, deaf to SIGTERM
meanwhile (an outside tester: ``--token-file /dev/zero`` took 24 GB). Every file a setting or a
flag names that the program reads whole goes through ``read_at_most``, which refuses what is
larger than the reader could ever want, with an ``OSError`` whose ``strerror`` says so: callers
already turn an ``OSError`` into their one-line refusal.
"""

from __future__ import annotations

import errno
import os
import stat

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
