"""Which backup key seals an archive: a separate one when configured, else the derived one.

A separate backup key (base64 of 32 bytes) comes from ``FERROHSM_BACKUP_KEY`` or the 0600 file
``[secrets].backup_key_file`` (``--backup-key-file``), checked like every secret file. Without
one, the backup key is derived from the master key (crypto/archive.py). Either way the archive's
key records stay sealed under the master key, so a restore needs the same master key too.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..config import decode_key32, secret_value
from ..crypto.archive import BackupKey

BACKUP_KEY_ENV = "FERROHSM_BACKUP_KEY"


def backup_key(master_key: bytes, env: Mapping[str, str], key_file: str) -> BackupKey:
    text = secret_value(env, BACKUP_KEY_ENV, key_file, "[secrets].backup_key_file")
    if text is None:
        return BackupKey.derive(master_key)
    return BackupKey.separate(decode_key32(text, BACKUP_KEY_ENV))
