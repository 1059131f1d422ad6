"""Reading the audit log's own files at start-up: is there a log at all, and which keys it created.

The scan reads stored lines as bytes and parses nothing it does not need: a record is canonical
JSON with sorted keys (audit/chain.py), so ``action`` comes first and a key-creation record starts
with ``{"action":"key.create"``. ``key_id`` and ``outcome`` sort after ``details`` (the one field
that may hold arbitrary names) and before only scalar fields, so the last occurrence of
``"key_id":"`` and of ``"outcome":"`` in a line are the record's own. Measured on a 1M-record
file log (623 MB, 10,000 creations): about 0.3 s with the files in the page cache; from a cold
disk it is bound by reading the segments once. The SQLite sink's ``action`` index makes its scan
read only the matching rows, as does the PostgreSQL sink's.

HMACs are not checked here: a forged creation record can only make start-up refuse (fail
closed), and ``ferrohsm audit verify`` is what proves the chain authentic.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..audit.anchor import CHECKPOINT_FILE, KEY_FILE
from ..audit.offline import VerifyInputError, chained_lines, expand_paths
from ..audit.pgsink import stored_lines
from ..audit.segments import list_segments, segment_name
from ..domain.errors import AuditUnavailable

SQLITE_FILE = "audit.sqlite3"
LOCK_FILE = ".lock"  # the sinks' lock (audit/oslock.py), beside the log
CREATE = b'{"action":"key.create",'
RESTORE = b'{"action":"key.restore",'  # a key restored from a backup archive (custody/restore.py)
LOST = b'{"action":"key.lost",'
GENESIS = b'{"action":"audit.genesis",'
KEY_ID = b'"key_id":"'
SUCCESS = b'"outcome":"success"'


@dataclass(frozen=True)
class AuditLocation:
    """Where the audit sink keeps its log: a file sink directory, the SQLite database in it, or
    a PostgreSQL database (``dsn``; the directory then holds this node's checkpoints)."""

    directory: str
    sink: str = "file"  # "file" | "sqlite" | "postgres"
    dsn: str = field(default="", repr=False)  # postgres only; never printed (a password)

    @property
    def database(self) -> str:
        return os.path.join(self.directory, SQLITE_FILE)

    def present(self) -> bool:
        """Whether any record is stored (before the sink is opened, which would create one)."""
        if self.sink != "file":
            return bool(self._first_rows(1))
        if not os.path.isdir(self.directory):
            return False
        return any(os.path.getsize(os.path.join(self.directory, segment_name(n))) > 0
                   for n in list_segments(self.directory))

    @contextlib.contextmanager
    def settled(self) -> Iterator[None]:
        """Hold the log's lock (shared) while looking at it: a process opening the log holds it
        exclusively while it writes a new log's genesis record and first checkpoint (or cuts a
        torn tail), so another process starting at the same moment (``processes = N``) sees a
        log with both or with neither, never a log whose checkpoints seem deleted."""
        if self.sink == "postgres" or not os.path.isdir(self.directory):
            yield
            return
        fd = os.open(os.path.join(self.directory, LOCK_FILE),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def holds_only_genesis(self) -> bool:
        """Whether the log holds exactly one record, the one that created it: what a first
        start killed between that record and its first checkpoint leaves (the opening writes
        nothing else before the checkpoint)."""
        if self.sink != "file":
            rows = self._first_rows(2)
            return len(rows) == 1 and bytes(rows[0]).startswith(GENESIS)
        if list_segments(self.directory) != [1]:
            return False
        with open(os.path.join(self.directory, segment_name(1)), "rb") as f:
            data = f.read(64 * 1024)
        return data.startswith(GENESIS) and data.count(b"\n") == 1 and data.endswith(b"\n")

    def _first_rows(self, limit: int) -> list[bytes]:
        """The first ``limit`` stored lines of a database log (none before it exists)."""
        if self.sink == "postgres":
            return list(stored_lines(self.dsn, limit=limit))
        return _sqlite_rows(self.database, limit) if os.path.isfile(self.database) else []

    def has_checkpoints(self) -> bool:
        """Whether the sink's checkpoints file beside the log holds anything. A PostgreSQL log's
        checkpoints are each node's own (pgsink.py): a node new to the cluster has none yet,
        so their absence proves nothing there, unless the node has its signing key already:
        the sink signs a checkpoint as it opens, so a node with a key has signed some, and
        their loss may hide a cut of the log's tail (the sink refuses a log shorter than the
        node's newest checkpoint; without checkpoints it could not)."""
        if self.sink == "postgres" and not os.path.isfile(os.path.join(self.directory,
                                                                       KEY_FILE)):
            return True
        path = os.path.join(self.directory, CHECKPOINT_FILE)
        return os.path.isfile(path) and os.path.getsize(path) > 0

    def creation_lines(self) -> Iterator[bytes]:
        """Stored lines of every ``key.create``, ``key.restore`` and ``key.lost`` record, in seq
        order."""
        if self.sink == "sqlite":
            yield from _sqlite_rows(self.database, None)
            return
        if self.sink == "postgres":
            yield from stored_lines(self.dsn, actions=("key.create", "key.lost"))
            return
        try:
            for raw in chained_lines(expand_paths([self.directory])):
                if raw.startswith((CREATE, RESTORE, LOST)):
                    yield raw
        except VerifyInputError as exc:
            raise AuditUnavailable(f"cannot read the audit log: {exc}") from None


def created_keys(location: AuditLocation) -> set[str]:
    """Ids of keys the log records as created (successfully) and not since accepted as lost."""
    known: set[str] = set()
    for raw in location.creation_lines():
        start = raw.rfind(KEY_ID)
        if start < 0:
            continue
        start += len(KEY_ID)
        key_id = raw[start:raw.find(b'"', start)].decode("ascii", "replace")
        if raw.startswith(LOST):
            known.discard(key_id)
        elif raw.rfind(SUCCESS) > start:
            known.add(key_id)
    return known


def _sqlite_rows(path: str, limit: int | None) -> list[bytes]:
    """Creation records (limit None), or any ``limit`` rows (to see whether there are any)."""
    # Read-only, unless a rollback journal is left (a database made in place by an older build,
    # killed during its first write): only a writable connection can undo it, as SQLite does.
    mode = "rw" if os.path.exists(path + "-journal") else "ro"
    try:
        db = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise AuditUnavailable(f"cannot open the audit database: {exc}") from None
    try:
        query: tuple[str, tuple[object, ...]] = (
            "SELECT CAST(record AS BLOB) FROM audit_log WHERE action IN (?, ?, ?) ORDER BY seq",
            ("key.create", "key.restore", "key.lost"))
        if limit is not None:
            query = ("SELECT CAST(record AS BLOB) FROM audit_log LIMIT ?", (limit,))
        sql, args = query
        return [row[0] for row in db.execute(sql, args)]
    except sqlite3.Error as exc:
        if "no such table" in str(exc):
            return []
        raise AuditUnavailable(f"cannot read the audit database: {exc}") from None
    finally:
        db.close()
