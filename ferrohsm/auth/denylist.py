"""A persisted deny-list of revoked token ids (``jti``).

Why by ``jti`` and never by token text: one signed token has many spellings (PyJWT accepts a
signature segment with trailing ``=``), so a list of token strings is bypassed by re-encoding the
same token. A ``jti`` is inside the signed payload and cannot be respelled.

Entries expire: once every token that could carry a ``jti`` is past its ``exp`` (plus leeway), the
entry is useless and is pruned, so the list stays small: a day later (``KEEP_EXPIRED``), so that a
wall clock stepped ahead by mistake, and back again, does not make a revoked token good again.
The file is JSON, mode 0600, written to a temporary file, fsynced and renamed into place, so a
crash leaves the old or the new list, never a torn one. A file that cannot be read at start-up
stops the server: silently forgetting revocations would re-admit revoked tokens. The file is re-read when it changes on disk (another process sharing
the data directory revoked a token). Several processes may revoke concurrently: each
read-modify-write holds ``flock`` on ``<file>.lock`` and merges the file's newest content, so no
revocation is lost to another's rename.

How a process learns of another's revocation at once without a system call per request: the
first 8 bytes of ``<file>.lock`` are a change counter, mapped into every process's memory
(``mmap``, shared pages of one host). A writer bumps it after its rename, before it returns;
every request compares it with the value last seen (a memory read, well under a microsecond) and
re-reads the file when it moved. A request that finds it moved waits for that re-read (its own,
or another thread's already under way), never for a local revoke's flock or fsync, and never
answers from the list as it was: the number last seen is updated only once the entries that go
with it are in place. A write always merges the file under the lock, whatever its ``stat``
says (a file renamed into place in the same clock tick, of the same size, on a reused inode,
looks unchanged). A ``stat`` of the file, at most once per ``check_interval``
(1 s), still catches a file replaced by other means (a restored backup). When the counter
cannot be mapped (a read-only directory), every request ``stat``s the file instead, as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import mmap
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from ..domain.errors import ConfigError, Unavailable
from ..domain.model import PLAIN_TEXT_RE
from ..smallfile import MIB, atomic_write, read_at_most

log = logging.getLogger("ferrohsm.auth")
FORMAT_VERSION = 1
MAX_JTI_CHARS = 128
LIST_LIMIT = 256 * MIB  # about two million revocations; /dev/zero is no deny-list
KEEP_EXPIRED = 86400.0  # seconds an expired entry is kept (a clock stepped ahead and back)


def valid_jti(jti: object) -> bool:
    """1-128 characters of plain text (model.PLAIN_TEXT_PATTERN: no control, line-separator or
    bidi-override characters), the rule the API description publishes for ``jti``."""
    return (isinstance(jti, str) and 0 < len(jti) <= MAX_JTI_CHARS
            and PLAIN_TEXT_RE.fullmatch(jti) is not None)


class RevocationList(Protocol):
    """What the Authenticator needs of a revoked-token list: ``DenyList`` below (a file, one
    host) or store/postgres_revocations.PostgresDenyList (one table, every node at once)."""

    def __len__(self) -> int: ...

    def is_revoked(self, jti: str | None, now: float) -> bool: ...

    def revoke(self, jti: str, until: float, now: float) -> None: ...

    def revoke_all(self, entries: dict[str, float], now: float) -> None: ...

    def entries(self, now: float) -> dict[str, float]: ...

    def prune(self, now: float) -> int: ...

    def reload(self) -> None: ...


def lengthened(entries: dict[str, float], more: dict[str, float]) -> dict[str, float]:
    """``entries`` with ``more`` added: an entry in both lasts as long as the longer says."""
    return {**entries, **{jti: max(until, entries.get(jti, until)) for jti, until in more.items()}}


class DenyList:
    """``jti`` → time (epoch seconds) after which the entry may be forgotten."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, max_entries: int = 100_000,
                 check_interval: float = 1.0) -> None:
        self._path = Path(path) if path else None
        self._path_text = os.fspath(self._path) if self._path else ""
        self._max = max_entries
        self._interval = check_interval
        self._lock = threading.Lock()  # this process's writers: one read-modify-write at a time
        # Held only while the entries are re-read and replaced, never across a write's flock or
        # fsync: a request that finds the shared counter moved waits for it, briefly, instead of
        # answering from a list another process has already added to (a revocation that other
        # process acknowledged would be ignored for as long as a local revoke was writing).
        self._entries_lock = threading.Lock()
        self._entries: dict[str, float] = {}
        self._seen: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self._counter: ChangeCounter | None = None
        self._generation = 0
        if self._path is not None:
            self._counter = ChangeCounter.open(self._path.with_name(self._path.name + ".lock"))
            if self._counter is None:
                self._interval = 0.0  # no shared counter: stat on every request
            else:
                self._generation = self._counter.value()
            self._entries = self._read()  # ConfigError when unreadable: fail closed
            self._seen = self._stat()

    def __len__(self) -> int:
        return len(self._entries)

    def is_revoked(self, jti: str | None, now: float) -> bool:
        """True when ``jti`` is listed. Called on every request, cache hits included."""
        if jti is None:
            return False
        self._maybe_refresh(now)
        return jti in self._entries

    def revoke(self, jti: str, until: float, now: float) -> None:
        """List ``jti`` until ``until``; persisted before returning (Unavailable on I/O failure)."""
        if not valid_jti(jti):
            raise ValueError("jti must be 1-128 printable characters")
        self.revoke_all({jti: until}, now)

    def revoke_all(self, entries: dict[str, float], now: float) -> None:
        """List each ``jti`` until its time (an entry only ever lengthens), in one write of the
        file; in force in this process even if that write fails. Invalid jtis are skipped."""
        listed = {jti: until for jti, until in entries.items() if valid_jti(jti)}
        if not listed:
            return
        with self._lock, self._file_lock():
            try:
                self._merge_file()
            except Unavailable:  # the file cannot be merged: in force here, not written
                with self._entries_lock:
                    self._entries = lengthened(self._entries, listed)
                raise
            kept_from = now - KEEP_EXPIRED  # a clock stepped ahead does not drop live entries
            merged = lengthened({k: v for k, v in self._entries.items() if v > kept_from},
                                listed)
            if sum(until > now for until in merged.values()) > self._max:
                raise Unavailable(f"the token deny-list is full ({self._max} live entries)")
            with self._entries_lock:
                self._entries = merged
            self._write(merged)

    def entries(self, now: float) -> dict[str, float]:
        """Every entry still in force at ``now`` (jti -> until), for a backup archive: the
        file as it is now, merged with this process's entries. Unavailable when the file
        cannot be read: a backup silently without revocations would re-admit revoked tokens."""
        with self._lock:
            self._merge_file()
            return {jti: until for jti, until in self._entries.items() if until > now}

    def prune(self, now: float) -> int:
        """Forget expired entries; returns how many went."""
        with self._lock, self._file_lock():
            self._merge_file()
            live = {k: v for k, v in self._entries.items() if v > now}
            gone = len(self._entries) - len(live)
            if gone:
                self._write(live)
                with self._entries_lock:
                    self._entries = live
            return gone

    def reload(self) -> None:
        """Re-read the file now (SIGHUP); a broken file keeps the entries in memory."""
        with self._lock, self._entries_lock:
            self._refresh_locked()

    # ---- persistence ----

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Exclusive ``flock`` on ``<file>.lock`` for one read-modify-write of the file, so two
        processes revoking at once cannot each write a list without the other's entry."""
        if self._path is None:
            yield
            return
        lock = self._path.with_name(self._path.name + ".lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise Unavailable(f"cannot lock the token deny-list: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _merge_file(self) -> None:
        """Under the file lock: take in what other processes wrote, always. Not only when the
        file's (mtime, size, inode) changed: a file renamed into place within the same clock
        tick, of the same size, on the inode the last one freed, looks unchanged, and writing
        without it would drop another process's acknowledged revocation."""
        if self._path is not None:
            with self._entries_lock:
                self._refresh_locked(strict=True)

    def _maybe_refresh(self, now: float) -> None:
        counter = self._counter
        moved = counter is not None and counter.value() != self._generation
        if self._path is None or (not moved and now - self._checked < self._interval):
            return
        with self._entries_lock:  # not _lock: a local revoke may hold that through its fsync
            current = counter.value() if counter is not None else 0  # before the read
            if moved and current == self._generation:
                return  # another thread took this change in while we waited for the lock
            self._checked = now
            if moved or self._stat() != self._seen:
                self._refresh_locked()
            # Only now, with the entries in place: a thread that finds the counter unchanged
            # answers from memory without the lock, so it must not see the new number before
            # the entries that go with it (it did, while a large file was being read).
            if counter is not None:
                self._generation = current

    def _refresh_locked(self, strict: bool = False) -> None:
        """Under _entries_lock: take in the file's entries (a union: a revocation in memory is
        never undone by an older file). A file that cannot be read keeps the entries in
        memory; with ``strict`` (before a write) it is Unavailable instead: writing the list
        from memory could drop what other processes revoked."""
        if self._path is None:
            return
        try:
            entries = self._read()
        except ConfigError as exc:
            if strict:
                raise Unavailable("the token deny-list on disk cannot be read, so it is not "
                                  f"written again (other processes' entries would be lost): "
                                  f"{exc.message}") from None
            log.warning("token deny-list changed on disk but cannot be read; keeping the "
                        "entries in memory: %s", exc.message)
            return
        # Union, never replace: a revocation in memory is never undone by an older file.
        self._entries = lengthened(entries, self._entries)
        self._seen = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        assert self._path is not None  # noqa: S101  narrows a type for mypy, not a runtime check
        try:
            st = os.stat(self._path_text)  # not Path.stat: this runs on every request
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> dict[str, float]:
        assert self._path is not None  # noqa: S101  narrows a type for mypy, not a runtime check
        where = f"token deny-list {self._path}"
        try:
            raw = read_at_most(self._path, LIST_LIMIT, regular=True)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            raise ConfigError(f"{where}: not valid JSON") from None
        if not isinstance(doc, dict):
            doc = {}
        revoked = doc.get("revoked")
        if doc.get("version") != FORMAT_VERSION or not isinstance(revoked, dict) or not all(
                valid_jti(k) and isinstance(v, (int, float)) and not isinstance(v, bool)
                for k, v in revoked.items()):
            raise ConfigError(f"{where}: not a version {FORMAT_VERSION} deny-list")
        return {k: float(v) for k, v in revoked.items()}

    def _write(self, entries: dict[str, float]) -> None:
        if self._path is None:
            return
        body = json.dumps({"version": FORMAT_VERSION, "revoked": entries},
                          separators=(",", ":"), sort_keys=True).encode("utf-8")
        try:
            atomic_write(self._path, body, 0o600)
        except OSError as exc:
            raise Unavailable(f"cannot persist the token deny-list: {exc.strerror}") from None
        self._seen = self._stat()
        if self._counter is not None:  # under the file lock: the other processes re-read
            self._generation = self._counter.bump()


class ChangeCounter:
    """A 64-bit counter in the first 8 bytes of a file, shared through ``mmap`` by every
    process of the host that maps it. Bumped only under the file's ``flock``."""

    def __init__(self, mapped: mmap.mmap) -> None:
        self._map = mapped  # holds its own descriptor: freed with the object

    @classmethod
    def open(cls, path: Path) -> ChangeCounter | None:
        """The counter of ``path`` (created 0600, padded to 8 bytes), or None when it cannot
        be created or mapped."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                # The 8 bytes written, never a hole (ftruncate made one): a store into a mapped
                # hole on a full filesystem is SIGBUS, the process killed; a write fails here.
                current = os.pread(fd, 8, 0)
                if os.pwrite(fd, current.ljust(8, b"\0"), 0) != 8:
                    return None
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            return cls(mmap.mmap(fd, 8))
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)

    def value(self) -> int:
        return int(struct.unpack_from("<Q", self._map, 0)[0])

    def bump(self) -> int:
        value = (self.value() + 1) & 0xFFFF_FFFF_FFFF_FFFF
        struct.pack_into("<Q", self._map, 0, value)
        return value


