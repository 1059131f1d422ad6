"""Reading audit logs, keys and checkpoints offline. Standard library only.

Shared by ``audit verify`` and ``audit report``. An input is a file sink directory (its
``audit-NNNNNN.jsonl`` segments in numeric order), a segment or exported JSONL file, or an SQLite
sink database (recognised by its header); several inputs are read in the order given.
"""

from __future__ import annotations

import base64
import binascii
import os
import sqlite3
from collections.abc import Generator
from typing import Any, BinaryIO

from ..domain.strictjson import loads
from .cpset import usable
from .segments import list_segments, segment_name

CHECKPOINTS = "checkpoints.jsonl"  # the signed checkpoints beside a log (anchor.py): no records

SQLITE_MAGIC = b"SQLite format 3\x00"
MAX_LINE = 1 << 20  # a record is a few KB: a longer "line" is not an audit log's


class VerifyInputError(Exception):
    """The verifier could not even start: unreadable input, bad key or checkpoint file (exit 2)."""


def expand_paths(paths: list[str]) -> list[str]:
    files: list[str] = []
    for path in paths:
        try:
            os.stat(path)  # a folder above it this user may not enter: say so, not "no such"
        except PermissionError as exc:
            raise VerifyInputError(f"cannot read {path}: {exc.strerror}") from None
        except OSError:
            pass  # named below
        if os.path.isdir(path):
            try:
                numbers = list_segments(path)
            except OSError as exc:  # a folder this user may not list
                raise VerifyInputError(f"cannot read {path}: {exc.strerror}") from None
            if not numbers:
                raise VerifyInputError(f"no audit segments (audit-NNNNNN.jsonl) in {path}; "
                                       "for an SQLite audit log give the database file")
            files.extend(os.path.join(path, segment_name(n)) for n in numbers)
        elif os.path.basename(path) == CHECKPOINTS:  # `DIR/*.jsonl` catches it too
            raise VerifyInputError(f"{path} holds the log's signed checkpoints, not its "
                                   "records: leave it out (`audit verify` takes it with "
                                   "--checkpoint FILE)")
        elif os.path.exists(path):
            files.append(path)
        else:
            raise VerifyInputError(f"no such file or directory: {path}")
    return files


def file_lines(path: str) -> Generator[bytes, None, None]:
    """Raw lines of one input, newline kept (SQLite rows get one)."""
    try:
        with open(path, "rb", buffering=1 << 20) as f:
            if f.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                f.seek(0)
                yield from _bounded_lines(f, path)
                return
    except OSError as exc:
        raise VerifyInputError(f"cannot read {path}: {exc.strerror}") from None
    yield from sqlite_lines(path)


def _bounded_lines(f: BinaryIO, path: str) -> Generator[bytes, None, None]:
    """The lines of ``f``, each read at most MAX_LINE bytes at a time: /dev/zero or a sparse
    20 GB file is said not to be a log, rather than read into memory until the process dies."""
    while line := f.readline(MAX_LINE + 1):
        if len(line) > MAX_LINE:
            raise VerifyInputError(f"{path} has a line longer than {MAX_LINE >> 20} MiB: not a "
                                   "FerroHSM audit log")
        yield line


def sqlite_lines(path: str) -> Generator[bytes, None, None]:
    """The rows of an SQLite sink's database as lines, read through SQLite only. A process
    that has the database open (the server reading its own log at start-up) must call this,
    never ``file_lines``: closing any descriptor of a file drops every POSIX lock the process
    holds on it, SQLite's included, and the next sqlite3 shell to open and close the database
    then believes it is the last user, checkpoints and deletes the live WAL."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise VerifyInputError(f"cannot open {path}: {exc}") from None
    try:
        rows = db.execute("SELECT CAST(record AS BLOB) FROM audit_log ORDER BY seq")
        for (record,) in rows:
            yield record + b"\n"
    except sqlite3.Error as exc:
        raise VerifyInputError(f"{path} is not a FerroHSM audit database: {exc}") from None
    finally:
        db.close()


def chained_lines(paths: list[str]) -> Generator[bytes, None, None]:
    for path in paths:
        yield from file_lines(path)


def load_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint from a JSON file, or the newest one of a checkpoints.jsonl file."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise VerifyInputError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    try:
        value = loads(text)
    except ValueError:
        lines = [line for line in text.splitlines() if line.strip()]
        try:
            value = loads(lines[-1]) if lines else None
        except ValueError:
            value = None
    if not isinstance(value, dict):
        raise VerifyInputError(f"{path} holds no checkpoint (JSON object or JSONL)")
    return value


def load_checkpoints(path: str) -> list[dict[str, Any]]:
    """Every checkpoint of a checkpoints.jsonl file (``read_checkpoints``); VerifyInputError
    when a line is not one."""
    checkpoints, problem = read_checkpoints(path)
    if problem is not None:
        raise VerifyInputError(problem)
    return checkpoints


def read_checkpoints(path: str) -> tuple[list[dict[str, Any]], str | None]:
    """Every checkpoint of a checkpoints.jsonl file (or the one of a JSON file), in file order,
    and what is wrong with the first line that is not a checkpoint (None when all are).

    A last line cut off mid-write (a crash while appending, never acknowledged) is left out; any
    other line that is not a checkpoint (a JSON object with an integer seq >= 1 and a hex
    head_hash) was written by someone else: the caller reports it as a bad checkpoint. Only an
    unreadable file is a VerifyInputError.
    """
    text = read_file(path)
    try:
        value = loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return ([value], None) if usable(value) else \
            ([], f"{path} is not a checkpoint (it needs an integer seq >= 1 and a hex head_hash)")
    lines = text.split(b"\n")
    out: list[dict[str, Any]] = []
    problem: str | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = loads(line)
        except ValueError:
            item = None
        if usable(item):
            out.append(item)
        elif problem is None and number < len(lines):  # complete (a newline follows): not torn
            problem = f"line {number} of {path} is not a checkpoint"
    return out, problem


def load_hmac_key(path: str | None, environ: dict[str, str] | None = None) -> bytes:
    """The audit HMAC key from a 0600 file (base64 text or 32 raw bytes) or the environment."""
    env = os.environ if environ is None else environ
    if path:
        try:
            mode = os.stat(path).st_mode
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise VerifyInputError(f"cannot read HMAC key file {path}: {exc.strerror}") from None
        if mode & 0o077:
            raise VerifyInputError(f"HMAC key file {path} is readable by group or others: "
                                   "chmod 600 it")
        return _decode_key(data, f"HMAC key file {path}", raw_ok=True)
    text = env.get("FERROHSM_AUDIT_HMAC_KEY")
    if not text:
        raise VerifyInputError("no HMAC key: set FERROHSM_AUDIT_HMAC_KEY (base64 of 32 bytes) "
                               "or pass --hmac-key-file FILE")
    return _decode_key(text.encode(), "FERROHSM_AUDIT_HMAC_KEY", raw_ok=False)


def _decode_key(data: bytes, where: str, *, raw_ok: bool) -> bytes:
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) == 32:
        return key
    if raw_ok and len(data) == 32:
        return data
    raise VerifyInputError(f"{where} must hold the base64 of 32 bytes")  # never echo the key



def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise VerifyInputError(f"cannot read {path}: {exc.strerror}") from None
