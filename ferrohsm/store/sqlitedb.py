"""What every SQLite-backed store shares: the file's permissions, the durable pragmas, and one
transaction wrapper, so the key store and the approval store cannot drift apart on any of them.

A database is a 0600 regular file (never a symlink) in a 0700 directory; SQLite gives its -wal and
-shm files the same mode. WAL with synchronous=FULL, because NORMAL is not durable across power
loss. A transaction rolls back on ANY exception and reports SQLite's and the OS's errors as a
StoreError that names what was being done, never the data.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from ..domain.errors import ConfigError, StoreError
from .records import write_error

BUSY_TIMEOUT_MS = 5000
T = TypeVar("T")


def retry_locked(open_once: Callable[[], T]) -> T:
    """``open_once()``, again while SQLite says the file is locked, for up to the busy timeout.

    Several processes opening a new database at once (``processes = N``): switching it to WAL
    and creating its schema take locks that SQLite may refuse at once, without waiting in its
    busy handler ("database is locked"); the process that lost would fail to start."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return open_once()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def prepare_file(path: str, what: str) -> None:
    """Create ``path`` 0600 (its parent 0700 when we create it); refuse anything not a file."""
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.makedirs(parent, 0o700, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
        except FileExistsError:  # another process of processes = N created it just now
            st = os.lstat(path)
        else:
            os.close(fd)
            return
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{what} {path} is not a regular file (symlinks are refused)")
    if not os.access(path, os.R_OK | os.W_OK):  # another owner: a data directory problem
        raise ConfigError(f"{what} {path} cannot be read and written by this user (uid "
                          f"{os.getuid()}): give the data directory and its files to the user "
                          "the server runs as")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o600, follow_symlinks=False)


def enable_wal(conn: sqlite3.Connection) -> str:
    """``PRAGMA journal_mode = WAL``, retried while another process sets it up: the switch of a
    new file can answer "database is locked" at once, without waiting on the busy timeout, when
    two processes open it at the same moment (``processes = 2`` on a new data directory
    failed to start about once in 25). Returns the journal mode in force."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005 + secrets.randbelow(20) / 1000)  # apart, not in step again


def connect_durable(path: str, what: str, *extra_pragmas: str) -> sqlite3.Connection:
    """Open in autocommit mode with WAL + synchronous=FULL, and check WAL took."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False)
    try:
        mode = enable_wal(conn)
        if mode != "wal":
            raise StoreError(f"{what} {path} cannot use WAL (journal mode {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        for pragma in extra_pragmas:
            conn.execute(f"PRAGMA {pragma}")
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, *, write: bool,
                failure: str) -> Iterator[sqlite3.Connection]:
    """BEGIN (IMMEDIATE for writes) ... COMMIT, or ROLLBACK on any exception.

    ``failure`` starts the StoreError message ("could not write key X"); the caller holds its
    connection's lock for the whole block.
    """
    try:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    except sqlite3.Error as exc:
        raise StoreError(f"{failure}: {exc}") from None
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException as exc:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"{failure}: {exc}") from None
        if isinstance(exc, OSError):
            raise write_error(failure.removeprefix("could not write "), exc) from None
        raise
