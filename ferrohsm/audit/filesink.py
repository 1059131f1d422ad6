"""FileSink: the audit log as append-only JSONL segments in a private directory.

Layout: ``<dir>/audit-000001.jsonl``, ``audit-000002.jsonl``, ... (0600, dir 0700), one record per
line (see chain.py), plus ``checkpoints.jsonl`` and the audit signing key (anchor.py) and a
``.lock`` file.

* Many writers (``processes = N`` on one host): every batch holds ``flock`` on ``.lock``
  (oslock.py) while it finds the head and writes; it fsyncs after releasing it. The lock file
  also holds the live segment's number, rewritten at each rotation. Finding the head is one
  ``pread`` of that number and one ``stat`` of the live segment: the same number and the size
  this process left mean nobody else wrote (the single-writer case costs nothing more). Else
  the segment list (after a rotation) and the last line are read, authenticated and followed
  (sinkbase.py). A torn line found there was left by a writer that died mid-write (the lock
  keeps live writers out): it is cut off and recorded, as at open. fsync is per file, so
  whoever flushes also makes earlier writers' bytes durable; a flush failure reaches every
  process that had the file open (Linux reports it to each), so none acknowledges after it.

* Rotation: once a segment reaches ``segment_max_bytes`` the next group goes to a new segment whose
  first record is ``audit.segment_start``. It is an ordinary chained record (its prev_hash is the
  previous segment's last hash), so deleting, emptying or reordering whole segments shows up as a
  seq gap or disorder in the verifier. One group may overshoot the size limit.
* Crash recovery at open: bytes after the last newline are a torn record that was never
  acknowledged (we acknowledge only after write + fsync). They are logged, cut off, and the chain
  continues with an ``audit.recovery`` record that says how many bytes were discarded at which
  offset. The last complete record must verify (hash + HMAC) or the sink refuses to open.
* Failed writes: the segment is truncated back to the last good offset. If that is impossible, or
  if fsync itself failed (after a failed fsync Linux may have dropped the dirty pages, so a retry
  that "succeeds" proves nothing), the sink refuses every further append until restarted.
* The live segment deleted, replaced or cut underneath us (checked with one stat per group:
  device and inode as opened, size not below what we saw; bytes beyond it are another writer's,
  and their last record must authenticate before we chain after it): refuse, and stay refused
  until restart. Writing on into an unlinked file would acknowledge records nobody can ever
  read; silently starting a fresh segment would paper over the loss. A restart re-reads what is really there, and the last signed
  checkpoint shows whether records went missing.
"""

from __future__ import annotations

import bisect
import logging
import os
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..domain.errors import AuditUnavailable, ConfigError
from ..domain.strictjson import loads
from .anchor import Anchor, fsync_dir
from .chain import AuditEvent, PreparedEvent, check_line, failed_check, stored_seq
from .oslock import ProcessLock
from .segments import list_segments, segment_name
from .sinkbase import RESTART_NEEDED, ChainedSink, stored_record

log = logging.getLogger("ferrohsm.audit")

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
_CHUNK = 64 * 1024
_MARK_EVERY = 256  # remember the offset of every 256th record while reading


def read_tail(fd: int, chunk: int = _CHUNK) -> tuple[bytes | None, int, int]:
    """(last complete line or None, offset just after it, number of torn bytes after it)."""
    size = os.fstat(fd).st_size
    buf, pos = b"", size
    newline = -1
    while newline < 0 and pos > 0:
        start = max(0, pos - chunk)
        buf, pos = os.pread(fd, pos - start, start) + buf, start
        newline = buf.rfind(b"\n")
    if newline < 0:
        return None, 0, size
    good_end = pos + newline + 1
    before = buf.rfind(b"\n", 0, newline)
    while before < 0 and pos > 0:
        start = max(0, pos - chunk)
        piece = os.pread(fd, pos - start, start)
        buf, pos, newline = piece + buf, start, newline + len(piece)
        before = buf.rfind(b"\n", 0, newline)
    return buf[before + 1:newline], good_end, size - good_end


class FileSink(ChainedSink):
    """Append-only JSONL segments with group commit and fsync; see the module docstring."""

    backend = "file"
    _splits_sync = True

    def __init__(self, directory: str | os.PathLike[str], hmac_key: bytes, *,
                 segment_max_bytes: int = DEFAULT_SEGMENT_BYTES, durable: bool = True,
                 anchor_every: int = 1000, signing_key_path: str | None = None,
                 clock: Callable[[], datetime] | None = None,
                 new_id: Callable[[], str] | None = None, max_group: int = 256,
                 checkpoint_interval: float = 0.0) -> None:
        if segment_max_bytes < 4096:
            raise ConfigError("audit segment_max_bytes must be at least 4096")
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        super().__init__(hmac_key, anchor=Anchor(self.directory, key_path=signing_key_path,
                                                 durable=durable),
                         durable=durable, anchor_every=anchor_every, clock=clock, new_id=new_id,
                         max_group=max_group, checkpoint_interval=checkpoint_interval)
        self._max_bytes = segment_max_bytes
        self._fd = -1
        self._segno = 0
        self._live_path = ""
        self._size = 0
        self._synced_size = 0  # bytes of the live segment known durable (write_queued/wait)
        self._ident = (0, 0)
        self._seg_first: list[tuple[int, int]] = []  # (first seq, segment number), ascending
        self._needs_start = False
        self._marks: dict[int, list[tuple[int, int]]] = {}  # segment -> sorted (seq, offset)
        self._marks_lock = threading.Lock()
        self._lock = ProcessLock(os.path.join(self.directory, ".lock"))
        try:
            with self._lock:  # one opener at a time: one genesis, one recovery of a torn tail
                self._open()
                self._checkpoint_opened()
        except BaseException:
            self._abandon()
            raise

    # ---- opening and recovery -----------------------------------------------------------------

    def _path(self, number: int) -> str:
        return os.path.join(self.directory, segment_name(number))

    def _open(self) -> None:
        """Recover the head from disk; check it against the last checkpoint before changing
        anything; then cut a torn tail and record that, or start a new log."""
        segments = list_segments(self.directory)
        torn = good_end = 0
        if not segments:
            self._adopt(self._create_segment(1), 1, 0)
        else:
            self._index_segments(segments)
            fd = os.open(self._path(segments[-1]), os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            line, good_end, torn = read_tail(fd)
            self._adopt(fd, segments[-1], good_end)
            if line is None and len(segments) > 1:  # crashed just after rotating
                self._needs_start = True
                with open(self._path(segments[-2]), "rb") as prev:
                    line = read_tail(prev.fileno())[0]
                if line is None:
                    raise AuditUnavailable(f"audit segment {segment_name(segments[-2])} is empty")
            if line is not None:
                self._set_head(self._verify_last(line))
        if self._lock.read_hint() != self._segno:
            self._lock.write_hint(self._segno)
        new_log = self._committed[0] == 0
        if new_log:
            self._log_id = self._new_id()
        self._check_against_checkpoint()
        if torn:
            self._truncate_torn(torn, good_end)
        if new_log:
            self.append(self._system_event("audit.genesis", "audit log created", backend="file"))
        if torn:
            self.append(self._recovery_event(torn, good_end, self._segno))

    def _recovery_event(self, torn: int, offset: int, number: int) -> AuditEvent:
        return self._system_event(
            "audit.recovery",
            f"discarded a torn audit record of {torn} bytes at offset {offset} of "
            f"{segment_name(number)} (crash during a write; it was never acknowledged)",
            segment=segment_name(number), offset=offset, bytes=torn)

    # ---- other writers ------------------------------------------------------------------------

    def _follow_storage(self) -> None:
        with self._lock:
            self._follow_file(recover=False)

    def _follow_file(self, *, recover: bool) -> tuple[int, int, int] | None:
        """Under the lock: find the head as stored and follow it (sinkbase ``_follow``). The
        fast path (nobody else wrote) is one ``pread`` and one ``stat``. With ``recover``, a
        torn line a dead writer left is cut off: (bytes, offset, segment) to record; else it
        is left for the next writer to cut."""
        hint = self._lock.read_hint()
        st = self._live_stat()
        if st.st_size == self._size and hint in (self._segno, 0):
            return None
        if hint != self._segno:  # another writer rotated: go to the newest segment
            segments = list_segments(self.directory)
            if segments and segments[-1] > self._segno:
                self._index_segments(segments)
                fd = os.open(self._path(segments[-1]), os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
                self._adopt(fd, segments[-1], 0)
                self._needs_start = False
        line, good_end, torn = read_tail(self._fd, 4096)
        found: tuple[int, int, int] | None = None
        if torn and recover:
            log.warning("audit: a writer died mid-write: discarding a torn record of %d bytes "
                        "at offset %d of %s", torn, good_end, segment_name(self._segno))
            os.ftruncate(self._fd, good_end)
            if self.durable:
                os.fsync(self._fd)
            found = (torn, good_end, self._segno)
        self._size = self._synced_size = good_end  # bytes before here are not ours to cut
        if line is None and self._segno > 1:  # a new segment nobody wrote to yet
            self._needs_start = True
            with open(self._path(self._segno - 1), "rb") as prev:
                line = read_tail(prev.fileno(), 4096)[0]
        if line is not None:
            self._follow(check_line(line, self._key))
        if self._segno and not self._seg_first_covers(self._segno):
            self._index_segments([self._segno])
        return found

    def _seg_first_covers(self, number: int) -> bool:
        return bool(self._seg_first) and self._seg_first[-1][1] == number

    def _live_stat(self) -> os.stat_result:
        """The live segment's stat; fail closed when it was deleted, replaced or cut."""
        try:
            st = os.stat(self._live_path)
            same = (st.st_dev, st.st_ino) == self._ident and st.st_size >= self._size
        except OSError:
            same = False
        if not same:
            self._failed = (f"live audit segment {segment_name(self._segno)} was deleted, replaced "
                            "or modified underneath the server; restart to recover")
            log.error("audit: %s%s", self._failed, RESTART_NEEDED)
            raise AuditUnavailable(f"audit log unavailable until restart: {self._failed}")
        return st

    def _index_segments(self, segments: list[int]) -> None:
        """First seq of every segment not yet indexed (for read) and the log id (from the first
        segment): all of them at open, the ones other writers started later on."""
        known = {number for _, number in self._seg_first}
        for number in segments:
            if number in known:
                continue
            with open(self._path(number), "rb") as f:
                first = f.readline()
            seq = stored_seq(first) if first.endswith(b"\n") else None
            if seq is not None:
                bisect.insort(self._seg_first, (seq, number))
            if number == segments[0] and seq is not None and not self._log_id:
                try:  # a line that does not parse has no log id; verify names it
                    head = loads(first)
                except ValueError:
                    head = None
                details = (head.get("details") if isinstance(head, dict) else None) or {}
                self._log_id = str(details.get("log_id") or "") if isinstance(details, dict) else ""

    def _verify_last(self, line: bytes) -> tuple[int, str]:
        result = check_line(line, self._key)
        if isinstance(result, str):
            raise AuditUnavailable(f"the last record of the audit log in {self.directory} fails "
                                   f"its integrity check ({failed_check(result)}); run `ferrohsm audit verify`")
        return result

    def _truncate_torn(self, torn: int, good_end: int) -> None:
        if torn:
            log.warning("audit: discarding a torn record of %d bytes at offset %d of %s",
                        torn, good_end, segment_name(self._segno))
            os.ftruncate(self._fd, good_end)
            os.fsync(self._fd)
            self._size = good_end

    def _create_segment(self, number: int) -> int:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(self._path(number), flags, 0o600)
        except FileExistsError:
            # A writer that died between creating it and recording it in the lock file left it
            # (empty, or it would have been found): take it over. Anything else is not ours.
            fd = os.open(self._path(number), os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            if os.fstat(fd).st_size:
                os.close(fd)
                raise AuditUnavailable(f"audit segment {segment_name(number)} exists already "
                                       "and is not empty") from None
        if self.durable:
            fsync_dir(self.directory)
        return fd

    def _adopt(self, fd: int, number: int, size: int) -> None:
        """Make ``fd`` the live segment, closing the previous one."""
        if self._fd >= 0 and self._fd != fd:
            os.close(self._fd)
        st = os.fstat(fd)
        self._fd, self._segno, self._size, self._ident = fd, number, size, (st.st_dev, st.st_ino)
        self._live_path = self._path(number)  # stat-ed once or twice a group: joined once here
        self._synced_size = size

    # ---- writing ------------------------------------------------------------------------------

    def _persist(self, events: list[PreparedEvent], sync: bool = True) -> list[dict[str, Any]]:
        """Write under the lock; fsync after releasing it. fsync is per file, so another
        writer's later bytes never become durable before ours, and a failed fsync reaches
        every process that has the file open: the lock need not cover the flush, and two
        processes' flushes overlap instead of queueing."""
        with self._lock:
            torn = self._follow_file(recover=True)
            records, fd, number, start = self._write_locked(events, torn)
        if self.durable and sync:
            self._fsync_written(fd, number, start)
        return records

    def _write_locked(self, events: list[PreparedEvent], torn: tuple[int, int, int] | None
                      ) -> tuple[list[dict[str, Any]], int, int, int]:
        """Seal after the head and write (not flush); the records, and where they went."""
        fd, number, size, needs_start = self._segment_with_room()
        lines = []
        if needs_start:
            lines.append(self._seal(self._system_event(
                "audit.segment_start", f"audit segment {segment_name(number)} started",
                segment=number))[1])
        if torn is not None:
            lines.append(self._seal(self._recovery_event(*torn))[1])
        first_seq = self._next_seq + 1
        records = []
        for event in events:
            record, line = self._seal(event)
            records.append(record)
            lines.append(line)
        data = b"\n".join(lines) + b"\n"
        self._append_group(fd, number, size, data)
        if size == 0:
            self._seg_first.append((first_seq, number))
        self._size, self._needs_start = size + len(data), False
        if not self.durable:
            self._synced_size = self._size
        return records, fd, number, size

    def _fsync_written(self, fd: int, number: int, start: int) -> None:
        """Flush a group written at ``start``; on failure cut it (and our unflushed writes
        before it) off if nobody appended after it, and stop until a restart either way."""
        end = self._size
        try:
            self._fsync(fd)
        except BaseException:
            with self._lock:
                try:
                    ours = fd == self._fd and os.fstat(fd).st_size == end
                except OSError:
                    ours = False
                if ours:
                    self._undo(fd, number, min(start, self._synced_size), fsync_failed=True)
                    self._size = min(start, self._synced_size)
                else:
                    self._failed = "fsync of the audit log failed; restart to recover"
            raise
        if fd == self._fd:
            self._synced_size = max(self._synced_size, end)

    def _segment_with_room(self) -> tuple[int, int, int, bool]:
        """(fd, segment number, size, whether a segment_start record comes first) to append to:
        the live segment, or a new one once the live one is full."""
        fd, number, size = self._fd, self._segno, self._size
        if size < self._max_bytes:
            return fd, number, size, self._needs_start
        if self.durable:
            # Written-but-unsynced records must be flushed before their fd is closed: ours, and
            # other writers' (they flush the live segment, which is about to be another file).
            try:
                self._fsync(fd)
            except BaseException:
                self._undo(fd, number, self._synced_size, fsync_failed=True)
                raise
            self._synced_size = size
        number += 1
        return self._create_segment(number), number, 0, True

    def _append_group(self, fd: int, number: int, size: int, data: bytes) -> None:
        """Append a group's bytes at ``size``; a failed write is cut off again. A new segment
        becomes the live one either way."""
        try:
            self._write_all(fd, data)
        except BaseException:
            self._undo(fd, number, size, fsync_failed=False)
            raise
        finally:
            if fd != self._fd:  # a new segment stays live even if this group failed
                self._adopt(fd, number, size)
                self._needs_start = True
                self._lock.write_hint(number)  # other writers follow it there

    def _sync_token(self) -> tuple[int, int, int]:
        """(a duplicate of the live fd, its segment, the size to cover): the duplicate stays
        valid even if a writer rotates (and closes) the segment while we flush."""
        return os.dup(self._fd), self._segno, self._size

    def _sync_storage(self, token: tuple[int, int, int]) -> None:
        self._fsync(token[0])

    def flushes_by_caller(self) -> bool:
        return self.durable and type(self)._fsync is FileSink._fsync  # no subclass's own flush

    def _sync_fd(self, token: tuple[int, int, int]) -> int | None:
        return token[0] if self.flushes_by_caller() else None

    def _storage_synced(self, token: tuple[int, int, int]) -> None:
        with self._io_lock:
            if token[1] == self._segno:
                self._synced_size = max(self._synced_size, token[2])

    def _drop_token(self, token: tuple[int, int, int]) -> None:
        os.close(token[0])

    def _after_sync(self) -> None:
        self._live_stat()  # unlinked, replaced or cut after the write: nothing was flushed

    def _sync_failed(self, token: tuple[int, int, int]) -> None:
        with self._lock:  # cut our unflushed records only if nobody appended after them
            try:
                ours = os.fstat(self._fd).st_size == self._size
            except OSError:
                ours = False
            if ours:
                self._undo(self._fd, self._segno, self._synced_size, fsync_failed=True)
                self._size = self._synced_size
            else:
                self._failed = "fsync of the audit log failed; restart to recover"
        self._written = self._committed

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def _fsync(self, fd: int) -> None:
        """One fsync per group; a separate method so tests can make it fail."""
        os.fsync(fd)

    def _undo(self, fd: int, number: int, size: int, *, fsync_failed: bool) -> None:
        """Cut a failed group's bytes off so no half record breaks the chain; else stop for good."""
        try:
            os.ftruncate(fd, size)
            if self.durable:
                os.fsync(fd)
        except OSError as exc:
            self._failed = (f"could not remove a partly written record from "
                            f"{segment_name(number)} ({exc.strerror}); restart to recover")
            return
        if fsync_failed:
            self._failed = "fsync of the audit log failed; restart to recover"

    # ---- reading ------------------------------------------------------------------------------

    def read(self, after_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        head_seq = self.catch_up()[0]  # other writers' records too
        index = list(self._seg_first)
        start = max(0, bisect.bisect_right([s for s, _ in index], after_seq + 1) - 1)
        out: list[dict[str, Any]] = []
        for _, number in index[start:]:
            if len(out) >= limit or self._scan_segment(number, after_seq, head_seq, limit, out):
                break
        return out

    def _scan_segment(self, number: int, after_seq: int, head_seq: int, limit: int,
                      out: list[dict[str, Any]]) -> bool:
        """Append records of one segment to ``out``; True once past the head or at ``limit``.

        Scanning starts from the nearest remembered (seq, offset) mark, so paging through a
        64 MiB segment does not re-read it from the top for every page.
        """
        marks = self._marks.setdefault(number, [])
        start = bisect.bisect_right(marks, (after_seq + 1, sys.maxsize)) - 1
        offset = marks[start][1] if start >= 0 else 0
        try:
            with open(self._path(number), "rb", buffering=1 << 20) as f:
                f.seek(offset)
                for raw in f:
                    seq = stored_seq(raw) if raw.endswith(b"\n") else None
                    if seq is None or seq > head_seq:
                        return True
                    if seq % _MARK_EVERY == 0:
                        self._remember(marks, seq, offset)
                    offset += len(raw)
                    if seq > after_seq:
                        out.append(stored_record(raw, segment_name(number)))
                        if len(out) >= limit:
                            return True
        except OSError as exc:
            raise AuditUnavailable(f"cannot read audit segment {segment_name(number)}: "
                                   f"{exc.strerror}") from None
        return False

    def _remember(self, marks: list[tuple[int, int]], seq: int, offset: int) -> None:
        with self._marks_lock:
            if not marks or seq > marks[-1][0]:
                marks.append((seq, offset))

    def _hash_at(self, seq: int) -> str | None:
        index = self._seg_first
        pos = bisect.bisect_right([s for s, _ in index], seq) - 1
        if pos < 0:
            return None
        with open(self._path(index[pos][1]), "rb") as f:
            for raw in f:
                if stored_seq(raw) == seq:
                    result = check_line(raw.rstrip(b"\n"), self._key)
                    return result[1] if isinstance(result, tuple) else "invalid"
        return None

    def _close_storage(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._lock.close()
