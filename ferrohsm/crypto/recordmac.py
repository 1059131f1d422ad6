"""The key-record MAC: HMAC-SHA256 under a key derived from the master key.

Sealing authenticates a version's material only; everything else in a key record (state, tags,
usage, versions, history, ...) decides access too, so stores authenticate whole records with
this MAC (store/records.py says what is MACed and how it is stored).

Why a derived key: the master key is the AES-256-GCM sealing key; using the same bytes as an HMAC
key as well would put two primitives on one key. HKDF-SHA256 (RFC 5869, no salt) with its own
label gives an independent 32-byte key, and the label keeps it apart from the sealing key, the
check value (a sealed constant) and the fingerprint (HMAC of the master key over another label).

Every tag is over ``u32(len(context)) | context | data``: the context says what the bytes are (a
key record, the store's format marker), so a tag made for one can never be passed off as the
other's.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..domain.errors import ConfigError

__all__ = ["APPROVALS_LABEL", "LABEL", "TAG_SIZE", "RecordMac"]

LABEL = b"ferrohsm key-record mac v1"
APPROVALS_LABEL = b"ferrohsm approval record MAC v1"
TAG_SIZE = 32
_MASTER_KEY_SIZE = 32


class RecordMac:
    """Makes record MACs under the derived key (stores compare them with hmac.compare_digest).

    Only a keyed HMAC object is kept (copied per tag, which also saves re-keying): the derived
    key is not an attribute, and repr shows nothing of it.
    """

    __slots__ = ("_keyed",)

    def __init__(self, mac_key: bytes) -> None:
        """Use ``derive``; this takes the already-derived key (tests, vectors)."""
        if not isinstance(mac_key, bytes) or len(mac_key) != TAG_SIZE:
            raise ConfigError(f"a record MAC key must be exactly {TAG_SIZE} bytes")
        self._keyed = hmac.new(mac_key, digestmod=hashlib.sha256)

    @classmethod
    def derive(cls, master_key: bytes) -> RecordMac:
        """HKDF-SHA256(master key, info=LABEL): the record MAC key of this master key."""
        if not isinstance(master_key, bytes) or len(master_key) != _MASTER_KEY_SIZE:
            raise ConfigError(f"the master key must be exactly {_MASTER_KEY_SIZE} bytes")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=TAG_SIZE, salt=None, info=LABEL)
        return cls(hkdf.derive(master_key))

    @classmethod
    def for_approvals(cls, audit_hmac_key: bytes) -> RecordMac:
        """HKDF-SHA256(audit HMAC key, info=APPROVALS_LABEL): the MAC key of stored approval
        records (store/approvalmac.py says why the audit key, not the master key)."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=TAG_SIZE, salt=None, info=APPROVALS_LABEL)
        return cls(hkdf.derive(audit_hmac_key))

    def __repr__(self) -> str:
        return "RecordMac(<derived key>)"

    def tag(self, context: bytes, data: bytes) -> bytes:
        """HMAC-SHA256 over the length-prefixed context, then the data."""
        mac = self._keyed.copy()
        mac.update(struct.pack(">I", len(context)))
        mac.update(context)
        mac.update(data)
        return mac.digest()
