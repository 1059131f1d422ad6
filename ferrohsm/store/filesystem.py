"""A key store on plain files: one JSON record per key, written atomically.

Layout under the data directory (0700, never a symlink)::

    LOCK            flock()ed for the store's lifetime: ONE process owns the directory
    keys/<id>.json  the authenticated record (records.py), 0600, replaced atomically
                    (temp + fsync + rename + dir fsync)
    meta/<name>     small blobs (put_meta), same atomic write
    index.json      light metadata per key + the stat stamp of the file it came from

Why it is shaped like this:

* A single owning process (enforced by the lock) is what makes in-process caching and the
  in-memory index safe: nobody else writes here, so only tampering can change a file behind our
  back, and every cache hit is checked against one ``stat`` (inode, mtime, size) to notice it.
* Every file operation goes through directory file descriptors opened with O_NOFOLLOW, and key
  ids are checked to be UUIDs before they become a file name, so nothing escapes the data
  directory and no symlink is ever followed.
* ``index.json`` is saved on close. At open, a key whose file still has the recorded stamp takes
  its entry from the index; any other file (written after the last clean close, or changed out of
  band) is read again. A crash therefore costs re-reading only what changed, never correctness.
* A key whose file cannot be read, or whose record fails its MAC, stays indexed by id: ``get``
  raises a StoreError or IntegrityError naming it (fail closed), pages report it in
  ``unreadable``, ``describe`` lists it, and every other key keeps working. index.json is not
  authenticated: it only steers listings and name lookups, every key they return is decoded and
  checked from its own file, and a name lookup whose record names another key misses.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import stat
import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from ..domain.errors import Conflict, NameTaken, NotFound, StoreError
from ..domain.model import Key, KeyFilter, Page
from .keyindex import IndexEntry, KeyIndex, check_batch, page_of
from .keystore import KeyStore, check_limit, decode_page_token
from .records import (
    RECORD_FAULTS,
    RecordAuthenticator,
    check_meta_name,
    check_new_key,
    check_update,
    is_key_id,
    write_error,
)

Stamp = tuple[int, int, int]  # (st_ino, st_mtime_ns, st_size): "is this still the file we read?"
Row = list[Any]  # one key in index.json: id, name, state, algorithm, usage, tags, *stamp

TMP_PREFIX = ".fhsm-tmp-"  # specific: other components keep files in the data dir too
INDEX_FORMAT = 1
MAX_FILE = 16 * 1024 * 1024  # a key record is a few KiB; refuse to slurp anything absurd
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO must not block
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _read_fd(fd: int, what: str) -> tuple[bytes, Stamp]:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{what}: not a regular file")
    if st.st_size > MAX_FILE:
        raise StoreError(f"{what}: file is too large")
    chunks, size = [], 0
    while chunk := os.read(fd, max(st.st_size - size, 0) + 1):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_FILE:
            raise StoreError(f"{what}: file is too large")
    return b"".join(chunks), _stamp(st)


def _open_dir(name: str, parent_fd: int | None, label: str) -> int:
    """Open (creating it 0700 if missing) a directory without following a symlink."""
    try:
        try:
            st = os.lstat(name, dir_fd=parent_fd)
        except FileNotFoundError:
            if parent_fd is None:
                os.makedirs(name, 0o700, exist_ok=True)
                _fsync_dir_path(os.path.dirname(name))
            else:
                os.mkdir(name, 0o700, dir_fd=parent_fd)
                os.fsync(parent_fd)  # the new directory entry must survive a crash too
            st = os.lstat(name, dir_fd=parent_fd)
        if stat.S_ISLNK(st.st_mode):
            raise StoreError(f"{label} is a symlink; refusing to follow it")
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(f"{label} is not a directory")
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        raise StoreError(f"cannot open {label}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise StoreError(f"{label} belongs to uid {st.st_uid}, not to this process's user")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o700)  # tighten: keys must not be reachable by group or others
    except BaseException:
        os.close(fd)
        raise
    return fd


class FilesystemStore(KeyStore):
    """Keys as files under ``data_dir``; owned by one process at a time (see module doc)."""

    name = "filesystem"
    fail_writes = False  # fault injection: fail after the temp file is written (tests only)

    def __init__(self, data_dir: str | os.PathLike[str], authenticator: RecordAuthenticator, *,
                 cache_size: int = 20_000) -> None:
        super().__init__(authenticator)
        self._root = os.path.abspath(os.fspath(data_dir))
        self._cache_size = max(cache_size, 1)
        self._lock = threading.RLock()  # writers, the index and cache inserts
        self._cache: dict[str, tuple[Key, Stamp]] = {}
        self._index = KeyIndex()
        self._stamps: dict[str, Stamp] = {}  # the file each index entry was built from
        self._unreadable: set[str] = set()
        self._dirty = False  # index.json no longer describes the files
        self._fds: list[int] = []
        try:
            self._root_fd = self._keep(_open_dir(self._root, None, f"data directory {self._root}"))
            self._lock_fd = self._keep(self._acquire_lock())
            self._keys_fd = self._keep(_open_dir("keys", self._root_fd, "keys directory"))
            self._meta_fd = self._keep(_open_dir("meta", self._root_fd, "meta directory"))
            for fd in (self._root_fd, self._keys_fd, self._meta_fd):
                self._sweep_temp_files(fd)
            self._load_index()
        except BaseException:
            self._release()
            raise

    def _keep(self, fd: int) -> int:
        self._fds.append(fd)  # so _release closes everything, whatever step failed
        return fd

    def _acquire_lock(self) -> int:
        try:
            fd = os.open("LOCK", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=self._root_fd)
        except OSError as exc:
            raise StoreError(f"cannot open the lock file in {self._root}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(f"data directory {self._root} is in use by another process") from None
        return fd

    @staticmethod
    def _sweep_temp_files(dir_fd: int) -> None:
        """Temp files are what a crash mid-write leaves behind; the rename never happened."""
        for name in os.listdir(dir_fd):
            if name.startswith(TMP_PREFIX):
                _unlink_quietly(name, dir_fd)

    # ---- reading ---------------------------------------------------------------------------

    def get(self, key_id: str) -> Key:
        hit = self._cache.get(key_id)
        if hit is not None:
            try:
                st = os.stat(key_id + ".json", dir_fd=self._keys_fd, follow_symlinks=False)
            except OSError:
                pass  # gone or replaced: the slow path says what happened
            else:
                if (st.st_ino, st.st_mtime_ns, st.st_size) == hit[1]:
                    return hit[0]
        return self._load(key_id)

    def resolve(self, ref: str) -> Key:
        """As ``KeyStore.resolve``; a ref found in the cache is a key id (only ids are cached),
        so it goes straight to ``get`` (still one lstat) without the UUID regex."""
        if type(ref) is str and ref in self._cache:
            key = self.get(ref)
            return key if self._passed.get(ref) is key else self._fresh(key)
        return super().resolve(ref)

    def _load(self, key_id: str) -> Key:
        """Read a key's file, refresh cache and index from it, or raise StoreError naming it."""
        self._check_open()
        if not is_key_id(key_id) or key_id not in self._index:
            raise NotFound("no such key")
        key, read_stamp = self._read_key(key_id)
        with self._lock:
            try:
                now = _stamp(os.stat(key_id + ".json", dir_fd=self._keys_fd, follow_symlinks=False))
            except OSError:
                now = None
            if now == read_stamp:  # not overtaken by a write while we were reading
                self._remember(key, read_stamp)
        return key

    def _read_key(self, key_id: str) -> tuple[Key, Stamp]:
        what = f"key {key_id}"
        try:
            fd = os.open(key_id + ".json", _READ_FLAGS, dir_fd=self._keys_fd)
        except OSError as exc:
            with self._lock:
                self._unreadable.add(key_id)
            if exc.errno == errno.ELOOP:
                raise StoreError(f"{what}: its file is a symlink; refusing to follow it") from None
            if exc.errno == errno.ENOENT:
                raise StoreError(f"{what}: its file is missing") from None
            raise StoreError(f"{what}: cannot read its file: {exc.strerror}") from None
        try:
            data, read_stamp = _read_fd(fd, what)
            key = self._records.decode(key_id, data)
        except RECORD_FAULTS:
            with self._lock:
                self._unreadable.add(key_id)
            raise
        except OSError as exc:
            raise StoreError(f"{what}: cannot read its file: {exc.strerror}") from None
        finally:
            os.close(fd)
        return key, read_stamp

    def _remember(self, key: Key, file_stamp: Stamp) -> None:
        """Make cache and index describe ``key``, read from (or written as) ``file_stamp``."""
        entry = IndexEntry.of(key)
        if self._index.entry(key.id) != entry:
            try:
                self._index.put(entry)
            except NameTaken:
                self._unreadable.add(key.id)
                raise StoreError(f"key {key.id}: its file claims a name another key "
                                 "holds") from None
        if self._stamps.get(key.id) != file_stamp:
            self._stamps[key.id] = file_stamp
            self._dirty = True
        self._unreadable.discard(key.id)
        self._cache_put(key, file_stamp)

    def _cache_put(self, key: Key, file_stamp: Stamp) -> None:
        if key.id not in self._cache and len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))  # oldest insertion first
        self._cache[key.id] = (key, file_stamp)

    def get_by_name(self, name: str) -> Key:
        key_id = self._index.id_for_name(name) if isinstance(name, str) else None
        if key_id is None:
            raise NotFound("no such key")
        key = self.get(key_id)
        if key.name != name:  # renamed out of band since the index was built
            raise NotFound("no such key")
        return key

    def list(self, filters: KeyFilter, limit: int = 100, page_token: str | None = None) -> Page:
        limit = check_limit(limit)
        after = decode_page_token(page_token)
        self._check_open()
        with self._lock:
            ids, more = self._index.page(filters, after, limit)
        keys, unreadable = [], []
        for key_id in ids:
            try:
                keys.append(self.get(key_id))
            except NotFound:  # deleted since the page was cut
                pass
            except RECORD_FAULTS:
                unreadable.append(key_id)
        return page_of(tuple(keys), ids[-1] if ids else None, more, tuple(unreadable), filters)

    def count(self, filters: KeyFilter | None = None) -> int:
        with self._lock:
            return self._index.count(filters)

    def get_meta(self, name: str) -> bytes | None:
        check_meta_name(name)
        self._check_open()
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=self._meta_fd)
            try:
                return _read_fd(fd, f"meta {name}")[0]
            finally:
                os.close(fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read meta {name}: {exc.strerror}") from None

    # ---- writing ---------------------------------------------------------------------------

    def create(self, key: Key) -> Key:
        stored = replace(check_new_key(key), revision=1)
        with self._lock:
            self._check_open()
            self._index.check_new(IndexEntry.of(stored))
            self._write_key(stored)
        return stored

    def update(self, key: Key) -> Key:
        with self._lock:
            self._check_open()
            current = self.get(key.id)
            check_update(current, key)
            stored = replace(key, revision=current.revision + 1)
            self._write_key(stored)
        return stored

    def _write_key(self, key: Key) -> None:
        file_stamp = self._atomic_write(self._keys_fd, key.id + ".json",
                                        self._records.encode(key), f"key {key.id}")
        self._remember(key, file_stamp)  # memory follows the disk even if the dir fsync fails
        self._sync_dir(self._keys_fd, f"key {key.id}")

    def bulk_create(self, keys: Iterable[Key]) -> None:
        """Insert many new keys with one directory fsync: all of them or none (imports, benches)."""
        batch = [replace(check_new_key(k), revision=1) for k in keys]
        with self._lock:
            self._check_open()
            entries = check_batch(self._index, batch)
            written: list[tuple[Key, Stamp]] = []
            try:
                for key in batch:
                    written.append((key, self._atomic_write(
                        self._keys_fd, key.id + ".json", self._records.encode(key),
                        f"key {key.id}")))
                self._sync_dir(self._keys_fd, "new keys")
            except StoreError:
                for key, _ in written:
                    _unlink_quietly(key.id + ".json", self._keys_fd)
                raise
            self._index.bulk_load(entries)
            self._dirty = True
            for key, file_stamp in written:
                self._stamps[key.id] = file_stamp
                self._cache_put(key, file_stamp)

    def delete(self, key_id: str) -> None:
        """Remove a key's record entirely: only for undoing a create (see MemoryStore.delete)."""
        with self._lock:
            self._check_open()
            if not is_key_id(key_id) or key_id not in self._index:
                raise NotFound("no such key")
            try:
                os.unlink(key_id + ".json", dir_fd=self._keys_fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise write_error(f"key {key_id}", exc) from None
            self._index.remove(key_id)
            self._cache.pop(key_id, None)
            self._stamps.pop(key_id, None)
            self._dirty = True
            self._unreadable.discard(key_id)
            self._sync_dir(self._keys_fd, f"deletion of key {key_id}")

    def put_meta(self, name: str, value: bytes) -> None:
        check_meta_name(name)
        with self._lock:
            self._check_open()
            self._atomic_write(self._meta_fd, name, bytes(value), f"meta {name}")
            self._sync_dir(self._meta_fd, f"meta {name}")

    def _atomic_write(self, dir_fd: int, final: str, data: bytes, what: str) -> Stamp:
        """Write ``final`` all-or-nothing; the stamp the new file will stat to after the rename.

        A fresh O_EXCL temp name means we never write through a planted file or symlink; the
        rename is the single commit point, so a failure anywhere before it changes nothing.
        """
        tmp = TMP_PREFIX + secrets.token_hex(8)
        try:
            fd = os.open(tmp, _TMP_FLAGS, 0o600, dir_fd=dir_fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
                file_stamp = _stamp(os.fstat(fd))
            finally:
                os.close(fd)
            if self.fail_writes:
                raise OSError(errno.EIO, "injected write failure")
            os.replace(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            _unlink_quietly(tmp, dir_fd)
            raise write_error(what, exc) from None
        return file_stamp

    @staticmethod
    def _sync_dir(dir_fd: int, what: str) -> None:
        try:
            os.fsync(dir_fd)
        except OSError as exc:
            raise StoreError(f"{what} was written but could not be made durable: "
                             f"{exc.strerror}") from None

    # ---- the index -------------------------------------------------------------------------

    def _load_index(self) -> None:
        """Rebuild the in-memory index: trust index.json per file only where the stamp matches."""
        saved = self._read_saved_index()
        trusted: list[IndexEntry] = []
        suspect: list[str] = []
        with os.scandir(self._keys_fd) as listing:
            for dirent in listing:
                key_id = dirent.name[:-5]
                if not dirent.name.endswith(".json") or not is_key_id(key_id):
                    continue  # not ours; never turned into a key
                file_stamp = _stamp(dirent.stat(follow_symlinks=False))
                row = saved.get(key_id)
                entry = _row_entry(key_id, row) if row and row[6:] == [*file_stamp] else None
                if entry is not None:
                    trusted.append(entry)
                    self._stamps[key_id] = file_stamp
                else:
                    suspect.append(key_id)
        for rejected in self._index.bulk_load(trusted):  # e.g. two files claiming one name
            self._stamps.pop(rejected.id, None)
            suspect.append(rejected.id)
        for key_id in sorted(suspect):
            self._index_from_file(key_id, _row_entry(key_id, saved.get(key_id)))
        self._dirty = bool(suspect) or len(self._index) != len(saved)
        self._save_index_quietly()

    def _index_from_file(self, key_id: str, fallback: IndexEntry | None) -> None:
        """Index one key from its file. An unreadable one stays indexed (with its last known
        entry, or a placeholder that only the empty filter matches) so get and list name it."""
        try:
            key, file_stamp = self._read_key(key_id)
            self._remember(key, file_stamp)
        except RECORD_FAULTS:
            self._unreadable.add(key_id)
            try:
                self._index.put(fallback or IndexEntry(key_id, None, None, None, None, ()))
            except NameTaken:
                self._index.put(IndexEntry(key_id, None, None, None, None, ()))

    def _read_saved_index(self) -> dict[str, Row]:
        """index.json as {id: row}; empty when missing or malformed (then: rebuild). Rows are
        checked lazily (_row_entry), and only for ids that name a real key file."""
        try:
            fd = os.open("index.json", _READ_FLAGS, dir_fd=self._root_fd)
        except OSError:
            return {}
        try:
            doc = json.loads(_read_fd(fd, "index.json")[0])
            if doc.get("format") != INDEX_FORMAT:
                return {}
            return {row[0]: row for row in doc["keys"] if type(row) is list and len(row) == 9}
        except (OSError, StoreError, ValueError, KeyError, TypeError, AttributeError):
            return {}
        finally:
            os.close(fd)

    def _save_index(self) -> None:
        rows: list[Row] = []
        for e in self._index.entries():
            file_stamp = self._stamps.get(e.id)
            if file_stamp is not None and e.id not in self._unreadable:
                rows.append([e.id, e.name, e.state, e.algorithm, e.usage, list(e.tags),
                             *file_stamp])
        data = json.dumps({"format": INDEX_FORMAT, "keys": rows}, separators=(",", ":"))
        self._atomic_write(self._root_fd, "index.json", data.encode("ascii"), "index.json")
        self._sync_dir(self._root_fd, "index.json")
        self._dirty = False

    def _save_index_quietly(self) -> None:
        """Only when something changed; failures are fine: a stale index costs re-reading."""
        if self._dirty:
            with contextlib.suppress(StoreError):
                self._save_index()

    # ---- lifecycle -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if not self._fds:
            raise StoreError("the filesystem store is closed")

    def close(self) -> None:
        """Save the index if it changed (best effort), then unlock."""
        with self._lock:
            if self._fds:
                self._save_index_quietly()
                self._release()

    def _release(self) -> None:
        self._cache = {}
        fds, self._fds = self._fds, []
        for fd in reversed(fds):  # closing the lock fd releases the flock
            os.close(fd)

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "data_dir": self._root, "keys": len(self._index),
                "unreadable_keys": sorted(self._unreadable), "cached_keys": len(self._cache)}

    # ---- record integrity ------------------------------------------------------------------

    def _stored_ids(self) -> Sequence[str]:
        """The index holds every key file, unreadable ones included (see _index_from_file)."""
        self._check_open()
        with self._lock:
            return sorted(e.id for e in self._index.entries())

    def _read_record(self, key_id: str) -> bytes:
        self._check_open()
        if not is_key_id(key_id):
            raise NotFound("no such key")
        try:
            fd = os.open(key_id + ".json", _READ_FLAGS, dir_fd=self._keys_fd)
        except FileNotFoundError:
            raise NotFound("no such key") from None
        except OSError as exc:
            raise StoreError(f"key {key_id}: cannot read its file: {exc.strerror}") from None
        try:
            return _read_fd(fd, f"key {key_id}")[0]
        finally:
            os.close(fd)

    def _reload(self, key_id: str) -> Key:
        with self._lock:
            self._cache.pop(key_id, None)
        return self._load(key_id)

    def _replace_record(self, key_id: str, old: bytes, new: bytes) -> None:
        key = self._records.decode(key_id, new)
        with self._lock:
            if self._read_record(key_id) != old:
                raise Conflict(f"the record of key {key_id} changed while it was rewritten")
            self._write_key(key)


def _row_entry(key_id: str, row: Row | None) -> IndexEntry | None:
    """The entry a saved index row describes, or None if the row is missing or malformed."""
    if row is None:
        return None
    _, name, state, algorithm, usage, tags = row[:6]
    if any(v is not None and type(v) is not str for v in (name, state, algorithm, usage)) \
            or type(tags) is not list or any(type(t) is not str for t in tags):
        return None
    return IndexEntry(key_id, name, state, algorithm, usage, tuple(tags))


def _fsync_dir_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # a symlinked parent is fine
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(name: str, dir_fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)
