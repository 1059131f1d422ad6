"""The backup archive: one self-describing file, encrypted and authenticated as a whole.

Layout::

    FERROHSM-BACKUP 1\\n
    <header: canonical JSON, one line>\\n
    <nonce (12) | AES-256-GCM(backup key, nonce, body, AAD = the two lines above) incl. tag>

The header is readable without any key (``head -2 FILE``): format, created_at, the source store
kind, key and approval counts, the source audit log's head (seq, hash), the master-key check value
(a sealed constant: public), which backup key encrypted the body (``derived`` from the master key
or ``separate``, and its public id). The header is the AAD, so changing any byte of it, of the
body, or cutting the file fails authentication before anything is parsed from the body.

The body (canonical JSON) holds the key records exactly as a store keeps them (their sealed
blobs are never unsealed here, and each record keeps its MAC), the store's meta blobs, the
approvals, the token revocations still in force (``revoked_tokens``: jti -> until; absent from
archives of older builds), and the audit head with the newest signed checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..crypto.archive import BackupKey
from ..domain.errors import BadRequest, IntegrityError

MAGIC = b"FERROHSM-BACKUP 1\n"
FORMAT = 1
MAX_HEADER = 64 * 1024


class ArchiveRefused(BadRequest):
    """An archive that cannot be restored: not ours, tampered with, or under another key."""

    code = "archive_refused"


@dataclass(frozen=True)
class Archive:
    header: dict[str, Any]
    body: dict[str, Any]


def canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def write(header: dict[str, Any], body: dict[str, Any], key: BackupKey) -> bytes:
    """The archive bytes; the header names the backup key that seals the body."""
    header = {**header, "format": FORMAT, "cipher": "AES-256-GCM",
              "backup_key": {"kind": key.kind, "id": key.key_id}}
    head = MAGIC + canonical(header) + b"\n"
    return head + key.seal(head, canonical(body))


def read_header(data: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    """(header, the authenticated head bytes, the sealed rest); ArchiveRefused if unreadable."""
    if not data.startswith(MAGIC):
        raise ArchiveRefused("not a FerroHSM backup archive (or an unknown format version)")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER)
    if end < 0:
        raise ArchiveRefused("the backup archive's header is truncated or too long")
    try:
        header = json.loads(data[len(MAGIC):end])
    except (ValueError, RecursionError):  # read before anything is authenticated: any bytes
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ArchiveRefused("the backup archive's header is not valid")
    return header, data[:end + 1], data[end + 1:]


def read(data: bytes, key: BackupKey) -> Archive:
    """Authenticate the whole archive under ``key``, then parse it. Nothing is believed first."""
    header, head, sealed = read_header(data)
    named = header.get("backup_key")
    if isinstance(named, dict) and named.get("id") != key.key_id:
        raise ArchiveRefused(_wrong_key(named, key))
    try:
        body = json.loads(key.open(head, sealed))
    except IntegrityError as exc:
        raise ArchiveRefused(exc.message) from None
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise ArchiveRefused("the backup archive's body is not valid")
    return Archive(header, body)


def _wrong_key(named: dict[str, Any], key: BackupKey) -> str:
    """Which key is wrong, by the archive's public key id (never any key material)."""
    if named.get("kind") == "derived" and key.kind == "derived":
        return ("wrong master key: the archive's backup key is derived from another master key "
                f"(backup key {named.get('id')}, this master key gives {key.key_id})")
    if named.get("kind") == "derived":
        return ("wrong backup key: the archive was written under the backup key derived from "
                "its master key; unset FERROHSM_BACKUP_KEY and [secrets].backup_key_file")
    return (f"wrong backup key (or the archive's header was altered): the archive names the "
            f"separate backup key {named.get('id')}; this is the {key.kind} backup key "
            f"{key.key_id} (set FERROHSM_BACKUP_KEY or [secrets].backup_key_file to the "
            "archive's)")
