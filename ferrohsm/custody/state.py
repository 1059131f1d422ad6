"""What split-knowledge mode keeps on disk: ``<data_dir>/custody.json`` (0600), never a share.

::

    {"format": 2, "scheme": "shamir-gf256",
     "current": {"split_id": "1a2b3c4d", "shares": 5, "threshold": 3, "check": "<base64>",
                 "commitments": ["<64 hex>", ...]},
     "pending": null,
     "macs": {"1a2b3c4d": "<64 hex>"}}

``check`` is the sealer's check value (crypto/seal.py) under the master key the split's shares
reconstruct: a wrong share set fails it. ``pending`` is the split of a rekey in progress
(custody/rekey.py), so the shares it printed open the service whatever point a crash left it at.
``macs`` holds, per split, HMAC-SHA256 of the canonical document (without ``macs``) under a key
derived from that split's master key (HMAC(master, LABEL)): shares/threshold cannot be edited
unnoticed once the key is back. Before that, an edited threshold can only make reconstruction
fail (the check value), never succeed with a wrong key. ``commitments`` (one SHA-256 a share,
``commitment``) let the unsealer refuse a wrong share on its own, before it counts: anyone may
submit shares, and a forged one in a full set would reset the custodians' progress. A file
with commitments is format 2 (one without, made by an older build, stays format 1), so a build
that predates them refuses it as a format it does not know.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..crypto import shamir
from ..crypto.seal import MASTER_KEY_SIZE, Sealer
from ..domain.errors import ConfigError
from ..smallfile import read_at_most
from .shares import SPLIT_ID_RE, Share

__all__ = ["FILE_NAME", "CustodyFile", "Split", "load", "new_split", "save"]

FILE_NAME = "custody.json"
SCHEME = "shamir-gf256"
LABEL = b"ferrohsm custody file v1"
COMMITMENT_LABEL = b"ferrohsm share commitment v1\x00"
_MAX_FILE = 16384


@dataclass(frozen=True)
class Split:
    split_id: str
    shares: int
    threshold: int
    check: bytes
    # SHA-256 of each share (``commitment``), in number order; empty in files made before them
    commitments: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"split_id": self.split_id, "shares": self.shares,
                               "threshold": self.threshold,
                               "check": base64.b64encode(self.check).decode("ascii")}
        if self.commitments:  # absent before: an older file's body, and so its MAC, unchanged
            doc["commitments"] = list(self.commitments)
        return doc

    def holds(self, share: Share) -> bool | None:
        """Whether ``share`` is this split's share of its number (None: no commitments to
        tell), so a mistyped or forged share is refused on its own, before it can spoil a
        set and reset the custodians' progress."""
        if not self.commitments:
            return None
        if not 1 <= share.x <= len(self.commitments):
            return False
        return hmac.compare_digest(self.commitments[share.x - 1], commitment(share))

    def opens_with(self, master: bytes) -> bool:
        """Whether ``master`` is this split's key (its check value opens)."""
        try:
            Sealer(master).verify_check_value(self.check)
        except ConfigError:
            return False
        return True


@dataclass(frozen=True)
class CustodyFile:
    current: Split
    pending: Split | None = None
    macs: tuple[tuple[str, str], ...] = ()

    def split(self, split_id: str) -> Split | None:
        for s in (self.current, self.pending):
            if s is not None and s.split_id == split_id:
                return s
        return None

    def body(self) -> bytes:
        # format 2 once a split has commitments: a build before them would take the file as
        # format 1, fail its MAC, and send custodians after "mistyped" shares; it refuses an
        # unknown format by name instead (files without commitments stay format 1, as made)
        committed = any(s is not None and s.commitments for s in (self.current, self.pending))
        doc = {"format": 2 if committed else 1, "scheme": SCHEME,
               "current": self.current.as_json(),
               "pending": None if self.pending is None else self.pending.as_json()}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")

    def mac_ok(self, split_id: str, master: bytes) -> bool:
        stored = dict(self.macs).get(split_id, "")
        return hmac.compare_digest(stored, _mac(self.body(), master))

    def signed(self, keys: dict[str, bytes]) -> CustodyFile:
        """This document with one MAC per split, under the given master keys by split id."""
        return replace(self, macs=tuple(sorted((sid, _mac(self.body(), key))
                                               for sid, key in keys.items())))


def _mac(body: bytes, master: bytes) -> str:
    derived = hmac.new(master, LABEL, hashlib.sha256).digest()
    return hmac.new(derived, body, hashlib.sha256).hexdigest()


def commitment(share: Share) -> str:
    """SHA-256 of a share, its split and number (hex): kept in the custody file so each share
    is checked as it is submitted. A share is 32 uniformly random bytes, so its hash tells
    nothing of it, nor of the master key, short of a 2^256 search."""
    return hashlib.sha256(COMMITMENT_LABEL + share.split_id.encode("ascii")
                          + bytes([share.x]) + share.y).hexdigest()


def new_split(master: bytes, shares: int, threshold: int) -> tuple[Split, list[Share]]:
    """A fresh split of ``master``: its public description and the shares (to show once)."""
    if len(master) != MASTER_KEY_SIZE:
        raise ValueError("the master key must be 32 bytes")
    split_id = secrets.token_hex(4)
    made = [Share(split_id, x, y) for x, y in shamir.split(master, shares, threshold)]
    return (Split(split_id, shares, threshold, Sealer(master).make_check_value(),
                  tuple(commitment(s) for s in made)), made)


def path_in(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / FILE_NAME


def load(data_dir: str | os.PathLike[str]) -> CustodyFile:
    """The custody file, or ConfigError naming what is wrong with it."""
    path = path_in(data_dir)
    try:
        data = read_at_most(path, _MAX_FILE, regular=True)  # whole, then cut; no FIFO wait
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: run `ferrohsm init --shares N --threshold T` "
                          'first (or set [secrets] unseal = "env")') from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        doc = json.loads(data)
        if doc.get("format") not in (1, 2) or doc.get("scheme") != SCHEME:
            raise ValueError("format")
        current = _split(doc["current"])
        pending = None if doc.get("pending") is None else _split(doc["pending"])
        if (doc["format"] == 2) != any(s is not None and s.commitments for s in (current,
                                                                                pending)):
            raise ValueError("format")  # the format says whether commitments are there
        macs = tuple(sorted((str(k), str(v)) for k, v in dict(doc["macs"]).items()))
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise ConfigError(f"{path} is not a valid FerroHSM custody file") from None
    return CustodyFile(current, pending, macs)


def _split(raw: dict[str, Any]) -> Split:
    split_id, shares, threshold = raw["split_id"], raw["shares"], raw["threshold"]
    if not isinstance(split_id, str) or not SPLIT_ID_RE.fullmatch(split_id):
        raise ValueError("split id")
    if not (isinstance(shares, int) and isinstance(threshold, int)
            and 2 <= threshold <= shares <= shamir.MAX_SHARES):
        raise ValueError("shares")
    commitments = raw.get("commitments", [])
    if not (isinstance(commitments, list) and len(commitments) in (0, shares) and all(
            isinstance(c, str) and len(c) == 64 and c == c.lower() and bytes.fromhex(c)
            for c in commitments)):
        raise ValueError("commitments")
    return Split(split_id, shares, threshold, base64.b64decode(raw["check"], validate=True),
                 tuple(commitments))


def save(data_dir: str | os.PathLike[str], custody: CustodyFile) -> None:
    """Write atomically (temp file, fsync, rename, fsync of the directory), mode 0600."""
    path = path_in(data_dir)
    doc = json.loads(custody.body())
    doc["macs"] = dict(custody.macs)
    data = json.dumps(doc, indent=1, sort_keys=True).encode("ascii") + b"\n"
    tmp = path.with_name(f".{FILE_NAME}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
