"""Signed checkpoints ("anchors") of the audit log head: they make truncation and rollback visible.

A hash chain alone cannot show that its *tail* was cut off: the shorter log still verifies. So
every N records, on demand and at clean shutdown, the sink signs ``{log_id, seq, head_hash, ts}``
with an Ed25519 key and appends it (fsynced) to ``checkpoints.jsonl``. A sink refuses to open a log
that is shorter than its last checkpoint, and ``ferrohsm audit verify --checkpoint FILE
--public-key FILE`` checks an exported checkpoint offline.

The protection is as strong as the place the checkpoint is kept: someone who can rewrite the data
directory can also delete ``checkpoints.jsonl`` (and read the signing key). Copy checkpoints and the
public key somewhere else (a ticket, a SIEM, the auditor's laptop) for an external anchor.

This is the signing side: it holds the private key and signs through crypto/signing.py. The
checkpoint format and its verification (standard library only, for the offline verifier) are in
checkpoint.py.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import stat
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, NoReturn

from ..crypto.signing import SigningKey
from ..domain.errors import AuditUnavailable, ConfigError
from ..domain.model import iso
from ..domain.strictjson import loads
from .chain import canonical_json
from .checkpoint import CHECKPOINT_TYPE, signature_ok, signed_bytes
from .offline import CHECKPOINTS

log = logging.getLogger("ferrohsm.audit")

KEY_FILE = "audit-signing-key.pem"
PENDING = ".pending"  # a new key's file until its first checkpoint is durable (Anchor)
PUBLIC_KEY_FILE = "audit-signing-key.pub.pem"
CHECKPOINT_FILE = CHECKPOINTS  # offline.py: the offline tools refuse it as a log


def fsync_dir(path: str) -> None:
    """Make a created/renamed directory entry durable (a new file is not durable until this)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_file(path: str, data: bytes) -> None:
    """Create ``path`` 0600 (never overwriting) with ``data``, durably; FileExistsError when it
    exists. Written under a temporary name and linked into place, so a process that starts at
    the same moment (``processes = N``) sees the whole file or none, never half of it."""
    temp = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temp, path)  # FileExistsError: another process won; its file is complete
    finally:
        os.unlink(temp)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _create_once(path: str, data: Callable[[], bytes]) -> bool:
    """Create ``path`` with ``data()`` unless it exists (or another process creates it first):
    whether this call created it."""
    if os.path.exists(path):
        return False
    try:
        write_private_file(path, data())
    except FileExistsError:
        return False
    return True


def _has_content(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except FileNotFoundError:
        return False


def last_line(fd: int, chunk: int = 4096) -> bytes | None:
    """The last non-blank line of an open file, read backwards from its end."""
    lines = last_lines(fd, chunk)
    return lines[-1] if lines else None


def last_lines(fd: int, chunk: int = 4096) -> list[bytes]:
    """The non-blank lines of the last ``chunk`` bytes of an open file (at least one line when
    the file has one), read backwards from its end."""
    end = os.fstat(fd).st_size
    buf = b""
    while end > 0:
        start = max(0, end - chunk)
        buf = os.pread(fd, end - start, start) + buf
        end = start
        lines = [x for x in buf.split(b"\n") if x.strip()]
        if len(lines) > 1 or (lines and end == 0):
            return lines[1:] if end > 0 and len(lines) > 1 else lines  # the first may be cut
    return []


def newest_checkpoint(path: str) -> dict[str, Any] | None:
    """The newest checkpoint of a checkpoints file (this log's or a witness's) parsed,
    ``{"corrupt": True}`` when its last line is not a JSON object, None when the file is
    missing or empty; OSError for anything else. Only the end of the file is read.

    Several writers of one log (``processes = N``, nodes) each append their checkpoints, so the
    lines near the end are not in seq order: of the last few lines, the one with the highest
    seq is the newest. A last line still being written (no newline yet) is not looked at."""
    try:
        with open(path, "rb") as f:
            lines = last_lines(f.fileno())
            if lines and not os.pread(f.fileno(), 1, os.fstat(f.fileno()).st_size - 1) == b"\n":
                lines = lines[:-1] or lines  # another writer's line, half written
    except FileNotFoundError:
        return None
    if not lines:
        return None
    try:
        parsed = [loads(line) for line in lines]
    except ValueError:
        return {"corrupt": True}
    values: list[dict[str, Any]] = [v for v in parsed if isinstance(v, dict)]
    if len(values) != len(parsed):
        return {"corrupt": True}
    seqs = [seq if isinstance(seq := v.get("seq"), int) else -1 for v in values]
    best = max(range(len(values)), key=lambda i: (seqs[i], i))
    return values[best] if seqs[-1] >= 0 else values[-1]


def load_signing_key(path: str) -> SigningKey:
    """An Ed25519 key from a PEM (PKCS#8) or raw 32-byte file that only its owner can read."""
    try:
        mode = os.stat(path).st_mode
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read audit signing key {path}: {exc.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(f"audit signing key {path} is readable by others: chmod 600 it")
    try:
        return SigningKey.load(data)
    except ValueError as exc:
        raise ConfigError(f"audit signing key {path}: {exc}") from None


class Anchor:
    """The signing key and the checkpoint file of one audit log.

    The key is loaded from ``key_path`` (default ``<directory>/audit-signing-key.pem``) or, when
    that file does not exist yet, generated (0600) with its public half next to it. A new key
    is kept as ``key_path + ".pending"`` until the first checkpoint it signs is durable, and
    only then put in place: a key in place means checkpoints were made (integrity/logscan.py
    counts on it for a PostgreSQL node), so a first start killed in between leaves a pending
    key that the next start simply uses, not a key whose checkpoints look deleted.
    """

    def __init__(self, directory: str, *, key_path: str | None = None,
                 checkpoint_path: str | None = None, durable: bool = True) -> None:
        self.key_path = key_path or os.path.join(directory, KEY_FILE)
        self.public_key_path = os.path.splitext(self.key_path)[0] + ".pub.pem"
        self.path = checkpoint_path or os.path.join(directory, CHECKPOINT_FILE)
        self._durable = durable
        self._drop_torn_tail()  # a torn first line is no checkpoint
        self._pending = self._pending_key()
        if self._pending is not None and not os.path.exists(self._pending) \
                and os.path.exists(self.key_path):
            self._pending = None  # its maker put it in place meanwhile: it is the key now
        self._key = load_signing_key(self._pending or self.key_path)
        self.public_key = self._key.public
        _create_once(self.public_key_path, self.public_key.pem)

    def _pending_key(self) -> str | None:
        """The file of a key not in place yet (made now, or by a start that did not get to its
        first checkpoint); None once the key is in place."""
        pending = self.key_path + PENDING
        if os.path.exists(self.key_path):
            return None
        if _has_content(self.path):
            if os.path.exists(pending):
                self._put_in_place(pending)  # killed after the first checkpoint, before this
            elif not os.path.exists(self.key_path):  # not put in place by another process now
                self._refuse_lost_key()
            return None
        made = _create_once(pending, SigningKey.generate_pem)
        if os.path.exists(self.key_path):
            # Another opener put its key in place since we looked (it links the key there
            # before it removes its pending file, so ours may be new): that key signs, never
            # ours, or our checkpoints would not verify under it (CI saw 8 openers race so).
            if made:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(pending)
            return None
        if made:
            log.info("generated audit signing key %s (put in place once it signed the first "
                     "checkpoint)", self.key_path)
        return pending

    def _put_in_place(self, pending: str) -> None:
        """``pending`` becomes the key (a hard link: never over a key already there, which
        another process sharing the directory may have put in place first)."""
        try:
            os.link(pending, self.key_path)
        except FileExistsError:
            pass
        except FileNotFoundError:  # put in place and unlinked by that other process
            if not os.path.exists(self.key_path):
                raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pending)
        fsync_dir(os.path.dirname(os.path.abspath(self.key_path)))

    def _refuse_lost_key(self) -> NoReturn:
        """A missing signing key is generated only for a log that has no checkpoint yet: a new
        key cannot continue checkpoints the old one signed (the next start would call them
        corrupt), and would leave a pair whose halves do not match."""
        raise AuditUnavailable(
            f"the audit signing key {self.key_path} is missing, but {self.path} holds "
            "checkpoints it signed: restore the key from a backup of the data directory. If it "
            "is lost for good, keep that file (and the public key beside it) for auditors, move "
            "it aside, and start once with --accept-audit-loss: a new key then signs from here")

    def public_key_pem(self) -> bytes:
        """What an auditor needs, besides a checkpoint, to run ``audit verify --checkpoint``."""
        return self.public_key.pem()

    def sign(self, *, log_id: str, seq: int, head_hash: str, ts: datetime) -> dict[str, Any]:
        """Sign the head and append the checkpoint durably; returns the checkpoint."""
        checkpoint: dict[str, Any] = {
            "v": 1, "type": CHECKPOINT_TYPE, "log_id": log_id, "seq": seq,
            "head_hash": head_hash, "ts": iso(ts),
            "key_fingerprint": self.public_key.fingerprint(),
        }
        checkpoint["sig"] = base64.b64encode(self._key.sign(signed_bytes(checkpoint))).decode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # other writers of the log append here too
            os.write(fd, canonical_json(checkpoint) + b"\n")
            if self._durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if self._pending is not None:
            self._put_in_place(self._pending)
            self._pending = None
        return checkpoint

    def last(self) -> dict[str, Any] | None:
        """The newest checkpoint, or None. Its signature is NOT checked here; see ``verify_own``.

        Only the end of the file is read: with time-interval checkpoints the file grows by one
        line every few seconds while records flow, and start-up must not read all of it.
        """
        return newest_checkpoint(self.path)

    def verify_own(self, checkpoint: dict[str, Any]) -> bool:
        return signature_ok(checkpoint, self.public_key)

    def _drop_torn_tail(self) -> None:
        """A crash mid-append can leave half a line; cut it so the next checkpoint starts clean."""
        try:
            with open(self.path, "rb+") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # never cut a line being written
                data = f.read()
                if data and not data.endswith(b"\n"):
                    keep = data.rfind(b"\n") + 1
                    log.warning("audit checkpoints: discarding %d torn bytes at the end of %s",
                                len(data) - keep, self.path)
                    f.truncate(keep)
                    os.fsync(f.fileno())
        except FileNotFoundError:
            pass
