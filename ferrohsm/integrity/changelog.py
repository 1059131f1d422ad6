"""What the audit log says about changes: every intent, how it was settled, per key.

One pass over the stored lines (the file sink's segments, or the SQLite sink's table), read as
bytes: only a line that can be an intent, a settlement, or a success record of a key change
written before intents existed is parsed, and each one parsed is authenticated (its hash and
HMAC, ``check_line``) before it is believed. Every line, parsed or not, is also checked to stand
where it was written (chainwalk.py: seq, link and hash), so a record copied or moved cannot be
settled again. A line that fails stops start-up: the log must pass ``ferrohsm audit verify`` first.

The result (``ChangeLog``):

* per key: the latest CONFIRMED change (an intent settled by success), the seqs of all its
  confirmed changes, and the latest success record of a change written before intents existed
  (for binding an old data directory);
* the intents nobody settled (``open_keys`` / ``open_approvals``), and which of them a later
  confirmed change builds on (its ``from_seq``): those were applied;
* ``first_seq``: the first seq the log still holds (> 1 once retention pruned older records).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..audit.chain import check_line
from ..audit.filesink import FileSink
from ..audit.offline import VerifyInputError, chained_lines, expand_paths, sqlite_lines
from ..audit.pgsink import PostgresSink, stored_lines
from ..audit.sinkbase import AuditSink, stored_record
from ..audit.sqlitesink import SQLiteSink
from ..domain import binding
from ..domain.errors import AuditUnavailable
from ..domain.model import parse_iso
from .chainwalk import ChainWalk, SeqOnly

_WORTH_PARSING = (b'"outcome":"intent"', b'"outcome":"rolled_back"', b'"intent_seq":',
                  b'{"action":"token.revoke",')
_LEGACY = tuple(b'{"action":"%s",' % a.encode() for a in sorted(binding.LEGACY_CHANGE_ACTIONS))
_SUCCESS = b'"outcome":"success"'


@dataclass(frozen=True, slots=True)
class Change:
    """An intent record of a change of a key (domain/binding.py)."""

    seq: int
    hash: str
    key_id: str
    action: str
    key_version: int | None
    digest: str
    target_revision: int
    from_seq: int
    node: str | None = None  # the process that made it, when several share the store


@dataclass(frozen=True, slots=True)
class ApprovalChange:
    """An intent record of a transition of an approval (control/dualcontrol.py)."""

    seq: int
    hash: str
    key_id: str | None
    action: str
    approval_id: str
    state: str
    target_revision: int
    node: str | None = None


@dataclass
class KeyHistory:
    latest: Change | None = None
    confirmed: set[int] = field(default_factory=set)
    # seq -> (from_seq, action) of each confirmed change: what it built on (reconcile's fork check)
    built: dict[int, tuple[int, str]] = field(default_factory=dict)
    legacy: tuple[int, str] | None = None  # latest pre-intent change record: (seq, hash)


@dataclass
class ChangeLog:
    keys: dict[str, KeyHistory] = field(default_factory=dict)
    pending: dict[int, Change | ApprovalChange] = field(default_factory=dict)
    built_on: set[int] = field(default_factory=set)  # open intents a confirmed change follows
    # (approval id, revision) of every approval transition whose success is recorded
    approvals_done: set[tuple[str, int]] = field(default_factory=set)
    first_seq: int = 0
    # token revocations: (jti, until or None for records older than ``until``, epoch seconds
    # of the record), for Authenticator.restore_revocations
    revoked: list[tuple[str, float | None, float]] = field(default_factory=list)

    def history(self, key_id: str) -> KeyHistory:
        return self.keys.setdefault(key_id, KeyHistory())

    def open_keys(self) -> dict[str, list[Change]]:
        """Unsettled key intents by key, ascending seq."""
        found: dict[str, list[Change]] = {}
        for seq in sorted(self.pending):
            intent = self.pending[seq]
            if isinstance(intent, Change):
                found.setdefault(intent.key_id, []).append(intent)
        return found

    def open_approvals(self) -> list[ApprovalChange]:
        return [i for _, i in sorted(self.pending.items()) if isinstance(i, ApprovalChange)]

    def newest_bindings(self) -> dict[str, int]:
        """Per key, the seq of its latest confirmed change: its record is bound to that one
        (or a later one), never to an older one (KeyStore.note_binding)."""
        return {key_id: h.latest.seq for key_id, h in self.keys.items() if h.latest is not None}

    # ---- reading records, in seq order ----

    def add(self, record: dict[str, Any]) -> None:
        outcome, details = record.get("outcome"), record.get("details") or {}
        if record.get("action") == "token.revoke":
            self._revoked(record, details)
        elif outcome == binding.INTENT:
            self._intent(record, details)
        elif outcome in (binding.SUCCESS, binding.ROLLED_BACK) and binding.INTENT_SEQ in details:
            self._settled(outcome == binding.SUCCESS, details[binding.INTENT_SEQ])
        elif outcome == binding.SUCCESS and record.get("action") in binding.LEGACY_CHANGE_ACTIONS \
                and isinstance(record.get("key_id"), str):
            self.history(record["key_id"]).legacy = (record["seq"], record["hash"])

    def _intent(self, record: dict[str, Any], details: dict[str, Any]) -> None:
        seq, digest, key_id = record["seq"], record["hash"], record.get("key_id")
        node = details.get("node") if isinstance(details.get("node"), str) else None
        if binding.DIGEST in details and isinstance(key_id, str):
            self.pending[seq] = Change(seq, digest, key_id, record["action"],
                                       record.get("key_version"), str(details[binding.DIGEST]),
                                       int(details[binding.TARGET_REVISION]),
                                       int(details.get(binding.FROM_SEQ) or 0), node)
        elif "approval_id" in details and binding.TARGET_REVISION in details:
            self.pending[seq] = ApprovalChange(seq, digest, key_id, record["action"],
                                               str(details["approval_id"]),
                                               str(details.get("approval_state")),
                                               int(details[binding.TARGET_REVISION]), node)

    def _revoked(self, record: dict[str, Any], details: dict[str, Any]) -> None:
        jti, until, made = details.get("jti"), details.get("until"), parse_iso(record.get("ts"))
        if record.get("outcome") == "success" and isinstance(jti, str) and made is not None:
            self.revoked.append((jti, float(until) if isinstance(until, (int, float)) else None,
                                 made.timestamp()))

    def _settled(self, success: bool, intent_seq: object) -> None:
        intent = self.pending.pop(intent_seq, None) if isinstance(intent_seq, int) else None
        if success and isinstance(intent, ApprovalChange):
            self.approvals_done.add((intent.approval_id, intent.target_revision))
        if not success or not isinstance(intent, Change):
            return
        history = self.history(intent.key_id)
        history.confirmed.add(intent.seq)
        history.built[intent.seq] = (intent.from_seq, intent.action)
        if history.latest is None or intent.seq > history.latest.seq:
            history.latest = intent
        if intent.from_seq in self.pending:
            self.built_on.add(intent.from_seq)


def read_changes(lines: Iterable[bytes], hmac_key: bytes, head_seq: int,
                 walk_chain: bool = True) -> ChangeLog:
    """The ChangeLog of the stored ``lines`` up to ``head_seq`` (module docstring).
    ``walk_chain=False``: every parsed record is still authenticated, but where each line stands
    is not checked (a third of the cost): for learning the newest bindings, not for settling."""
    log = ChangeLog()
    walk: ChainWalk | SeqOnly = ChainWalk(head_seq, hmac_key) if walk_chain \
        else SeqOnly(head_seq)
    for raw in lines:
        if walk.complete:
            break
        seq = walk.step(raw)
        if not log.first_seq:
            log.first_seq = seq
        if not _worth_parsing(raw):
            continue
        line = raw.rstrip(b"\n")
        checked = check_line(line, hmac_key)
        if isinstance(checked, str):
            raise AuditUnavailable(f"an audit record fails its integrity check ({checked}) near "
                                   f"seq {seq}; run 'ferrohsm audit verify'")
        record = stored_record(line, f"the audit log at seq {seq}")
        record["hash"] = checked[1]
        log.add(record)
    walk.finish()
    return log


def _worth_parsing(raw: bytes) -> bool:
    return any(marker in raw for marker in _WORTH_PARSING) or (
        raw.startswith(_LEGACY) and _SUCCESS in raw)


def sink_lines(sink: AuditSink) -> Iterator[bytes]:
    """The stored lines of ``sink``'s log, in seq order."""
    try:
        if isinstance(sink, FileSink):
            yield from chained_lines(expand_paths([sink.directory]))
        elif isinstance(sink, SQLiteSink):
            yield from sqlite_lines(sink.path)  # never a plain open() of a database in use
        elif isinstance(sink, PostgresSink):
            yield from stored_lines(sink.dsn)
        else:
            raise AuditUnavailable(f"cannot read a {type(sink).__name__} log at start-up")
    except VerifyInputError as exc:
        raise AuditUnavailable(f"cannot read the audit log: {exc}") from None
