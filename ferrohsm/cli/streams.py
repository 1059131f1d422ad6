"""Bytes in and out of the CLI: ``--in FILE`` or stdin, ``--out FILE`` or stdout.

Binary data goes through the byte streams (``sys.stdout.buffer``), never through text encoding.
Files that receive plaintext or key material are created 0600, because a decrypted secret must
not become world-readable just because the umask was loose. A raw binary value is not written to
a terminal: it would garble the screen, and for unwrapped key material, show a secret to anyone
looking over a shoulder.
"""

from __future__ import annotations

import os
import sys
from typing import BinaryIO

from .settings import UsageError

MAX_INPUT = 64 * 1024 * 1024  # far above what the server accepts; stops `cat /dev/zero |` early


def read_input(path: str | None) -> bytes:
    """All of ``path`` ('-' or None: stdin)."""
    if path in (None, "-"):
        stream: BinaryIO = sys.stdin.buffer
        return _read_capped(stream, "stdin")
    try:
        with open(path, "rb") as fh:
            return _read_capped(fh, path)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def _read_capped(stream: BinaryIO, name: str) -> bytes:
    data = stream.read(MAX_INPUT + 1)
    if len(data) > MAX_INPUT:
        raise UsageError(f"{name} is larger than {MAX_INPUT // (1024 * 1024)} MiB")
    return data


def read_text_input(path: str | None, what: str) -> str:
    """A ``fhsm:v…`` value from a file or stdin, surrounding whitespace removed."""
    data = read_input(path).strip()
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"the input is not a {what} (expected fhsm:v<N>:<base64> text)") from None
    if not text:
        raise UsageError(f"the input is empty (expected a {what})")
    return text


def write_output(path: str | None, data: bytes, *, secret: bool = False,
                 binary: bool = False) -> None:
    """``data`` to ``path`` ('-' or None: stdout). ``secret`` files are made 0600."""
    if path in (None, "-"):
        if binary and sys.stdout.isatty():
            raise UsageError("refusing to write binary output to a terminal: "
                             "use --out FILE or redirect stdout")
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        fd = os.open(path, flags, 0o600 if secret else 0o644)
        with os.fdopen(fd, "wb") as fh:
            if secret:
                os.fchmod(fh.fileno(), 0o600)
            fh.write(data)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
