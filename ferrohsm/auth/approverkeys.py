"""The approvers' registered public keys (``[approvals].approver_keys_file``), hot-reloaded.

The file is TOML, one entry per approver: the token subject, then its PEM public key (Ed25519 or
EC P-256)::

    [approvers]
    "alice@example.com" = \"\"\"
    -----BEGIN PUBLIC KEY-----
    MCowBQYDK2VwAyEA...
    -----END PUBLIC KEY-----
    \"\"\"

It is the administrator's file, not self-service: nobody registers a key through the API, and the
file must be writable by its owner only (as keyset files: whoever can write it can vote as anyone).
The same file is what ``ferrohsm audit verify-votes`` checks an export against.

Like the token keysets (keysets.py) it is re-read when its (mtime, size, inode) change, at most
once per ``interval`` and lazily when a vote needs it; a file that fails to load never replaces
the working table, and every reload, accepted or rejected, is reported to ``on_event`` (audited).
"""

from __future__ import annotations

import logging
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path

from ..crypto.votesig import ApproverKey, load_public_key
from .keysets import EventHook, KeysetError, PolledFiles, read_small_file

log = logging.getLogger("ferrohsm.auth")
MAX_SUBJECT_CHARS = 256


def parse_approver_keys(data: bytes, where: str) -> dict[str, ApproverKey]:
    """subject -> key from the file's bytes; KeysetError naming the first problem."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KeysetError(f"{where}: not valid TOML ({exc})"[:300]) from None
    table = doc.get("approvers")
    if not isinstance(table, dict) or set(doc) != {"approvers"}:
        raise KeysetError(f"{where}: must hold exactly one [approvers] table "
                          "(subject = PEM public key)")
    keys: dict[str, ApproverKey] = {}
    for subject, pem in table.items():
        if not 0 < len(subject) <= MAX_SUBJECT_CHARS or not subject.isprintable():
            raise KeysetError(f"{where}: subject {subject!r:.40} is not a token subject")
        if not isinstance(pem, str):
            raise KeysetError(f"{where}: {subject!r:.40} must be a PEM string")
        try:
            keys[subject] = load_public_key(pem.encode("ascii", "replace"),
                                            f"{where}: {subject!r:.40}")
        except ValueError as exc:
            raise KeysetError(str(exc)) from None
    return keys


def load_approver_keys(path: str) -> dict[str, ApproverKey]:
    where = "[approvals].approver_keys_file"
    return parse_approver_keys(read_small_file(path, where), f"{where} {path}")


class ApproverKeys(PolledFiles):
    """The current subject -> key table, swapped atomically when the file changes."""

    label = "approver keys reload"

    def __init__(self, path: str, *, interval: float = 2.0, on_event: EventHook | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__([Path(path)], interval=interval, on_event=on_event, clock=clock)
        self.path = path  # stat before load: a change in between is read again
        self._keys = load_approver_keys(path)  # a broken file at start-up stops the server

    def current(self) -> Mapping[str, ApproverKey]:
        self.poll()
        return self._keys

    def _reload_locked(self, reason: str) -> bool:
        try:
            new = load_approver_keys(self.path)
        except KeysetError as exc:
            self._emit("error", f"approver keys reload ({reason}) rejected, previous keys kept: "
                                f"{exc.message}")
            return False
        old, self._keys = self._keys, new
        added = sorted(set(new) - set(old))
        removed = sorted(set(old) - set(new))
        changed = sorted(s for s in set(new) & set(old)
                         if new[s].fingerprint != old[s].fingerprint)
        self._emit("success", f"approver keys reloaded ({reason}): {len(new)} approver(s); "
                              f"added {added or 'none'}; removed {removed or 'none'}; "
                              f"replaced {changed or 'none'}")
        return True

    def _emit(self, outcome: str, message: str) -> None:
        (log.info if outcome == "success" else log.warning)("%s", message)
        super()._emit(outcome, message)
