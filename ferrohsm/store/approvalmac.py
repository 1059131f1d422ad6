"""Approval records authenticated where they are stored (the SQLite file, the PostgreSQL table).

An approval decides access: ``state = approved`` lets the next matching request run. Stored as
plain JSON, anyone who can write the database (a backup operator, a database role, root on a
storage node) could approve a pending request with invented votes, or make up an approved
request for any arguments, without any secret. Each stored record therefore carries an
HMAC-SHA256 over its canonical JSON (its id and revision included), under a key derived from the
audit HMAC key, the secret that already vouches for the audit log the approvals are recorded in.
That key, unlike the master key, is not rotated by a rekey, so approvals in flight stay valid
across one.

A record without a MAC, or whose MAC does not match, is refused: ``get`` raises IntegrityError
(the approval cannot be used, whatever it says); listings leave it out and log an error, so one
bad row does not hide every other approval. Approvals stored before this check existed carry no
MAC and are refused the same way: a pending request is asked for again. What a MAC cannot see is
a whole older copy of a record put back (README, "Dual control").
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Iterable
from typing import Any

from ..domain.approval import Approval, from_record, to_record
from ..domain.errors import IntegrityError, StoreError
from .records import RecordAuthenticator

log = logging.getLogger("ferrohsm.approvals")
MAC_FIELD = "mac"


class ApprovalCodec:
    """Approval <-> the authenticated JSON text the database stores."""

    __slots__ = ("_mac", "_reported")

    def __init__(self, mac: RecordAuthenticator) -> None:
        """``mac``: crypto.recordmac.RecordMac.for_approvals(the audit HMAC key)."""
        self._mac = mac
        self._reported: set[str] = set()  # records already logged as failing (once each)

    def __repr__(self) -> str:
        return "ApprovalCodec(<derived key>)"

    def encode(self, approval: Approval) -> str:
        record = to_record(approval)
        return json.dumps({**record, MAC_FIELD: self._tag(record)}, sort_keys=True)

    def decode(self, text: str) -> Approval:
        """The approval, or IntegrityError when the record is not one FerroHSM wrote as is."""
        try:
            record = json.loads(text)
            mac = record.pop(MAC_FIELD, None) if isinstance(record, dict) else None
        except ValueError:
            raise StoreError("a stored approval is not JSON") from None
        if not isinstance(mac, str) or not hmac.compare_digest(mac, self._tag(record)):
            approval_id = str(record.get("id", "?"))[:64] if isinstance(record, dict) else "?"
            raise IntegrityError(f"approval {approval_id} failed its integrity check (changed "
                                 "outside FerroHSM, or stored before approvals were "
                                 "authenticated): it cannot be used; ask for it again")
        try:
            return from_record(record)
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"a stored approval is malformed: {exc}") from None

    def decode_all(self, texts: Iterable[str]) -> list[Approval]:
        """The approvals of a listing, each record that fails its check left out (logged)."""
        found: list[Approval] = []
        for text in texts:
            try:
                found.append(self.decode(text))
            except (IntegrityError, StoreError) as exc:
                if exc.message not in self._reported:  # every scan would repeat it
                    if len(self._reported) > 10_000:
                        self._reported.clear()
                    self._reported.add(exc.message)
                    log.error("approval left out of listings: %s", exc.message)
        return found

    def _tag(self, record: Any) -> str:
        canonical = json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8")
        return self._mac.tag(b"approval", canonical).hex()
