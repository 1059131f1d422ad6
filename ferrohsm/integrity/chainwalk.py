"""Start-up's walk along the stored chain: every record there, in order, linked, unmodified.

Why at every start: start-up reconciliation (reconcile.py) believes what the log says about
changes, and a record's HMAC proves only that the server wrote it, not that it stands where it
was written. A copied intent record further down, or an intent swapped with its settlement,
would otherwise be settled again, and the server would sign a false record after it. And a
server that appends to a log broken in its middle writes records no verifier will ever accept.

What is checked, line by line, on the stored bytes (audit/chain.py, as the offline verifier's
fast path does): the line is a canonical record, its seq is the one after its predecessor's,
its ``prev_hash`` is its predecessor's hash, and its content hashes to its ``hash``. Together
with the HMAC of the last record (the sink checks it when it opens the log) that authenticates
every record before it: a forger who recomputes the keyless hashes from a changed record on
cannot make the last record's HMAC. A log that starts after seq 1 must hold the
``audit.checkpoint`` record that attests its pruning, as the verifier requires.

Cost: about 3.5 µs a record (one SHA-256 and a few slices), 3.5 s a million records on the bench
machine, on top of the read itself. ``ferrohsm audit verify`` remains what tells an auditor
exactly what happened; here the first break stops start-up and names its seq.
"""

from __future__ import annotations

import json
from typing import NoReturn

from ..audit.chain import check_line, failed_check, line_fields, record_hash, split_line
from ..domain.errors import AuditUnavailable

_PRUNED = b'{"action":"audit.checkpoint",'
_VERIFY = "run 'ferrohsm audit verify' on the log to see what was changed"


class ChainWalk:
    """Feed it the stored lines in order (``step``) until ``complete``; then ``finish``."""

    __slots__ = ("_attested", "_first", "_head", "_hmac_key", "_last", "_prev", "_seq")

    def __init__(self, head_seq: int, hmac_key: bytes) -> None:
        self._head, self._hmac_key = head_seq, hmac_key
        self._seq = 0  # the last seq checked
        self._prev = b""  # its hash
        self._first: tuple[int, bytes] | None = None  # the first record: seq, prev_hash
        self._last = b""  # the last line checked (its HMAC is checked at the end)
        self._attested: dict[int, str] = {}  # pruning attestations: last pruned seq -> hash

    @property
    def complete(self) -> bool:
        """Whether the head is reached: later lines are another process's, maybe half written."""
        return self._seq >= self._head

    def step(self, raw: bytes) -> int:
        """Check the next stored line; its seq. AuditUnavailable names the first break."""
        line = raw[:-1] if raw.endswith(b"\n") else raw
        parts = split_line(line)
        fields = line_fields(parts[0]) if parts else None
        if parts is None or fields is None:
            self._broken(self._seq + 1, f"the record after seq {self._seq} is not a record")
        body, digest = parts[0], parts[1]
        seq, prev = fields
        if self._first is None:
            self._first = (seq, prev)
        elif seq != self._seq + 1:
            self._broken(self._seq + 1, f"seq {self._seq} is followed by seq {seq}")
        elif prev != self._prev:
            self._broken(seq, f"record seq {seq} does not link to seq {self._seq}")
        if record_hash(prev, body).encode() != digest:
            self._broken(seq, f"record seq {seq} does not match its hash")
        if body.startswith(_PRUNED):
            self._attest(line)
        self._seq, self._prev, self._last = seq, digest, line
        return seq

    def finish(self) -> None:
        """After the last line: the head reached, the last record authentic, a pruned start
        attested."""
        if self._seq < self._head:
            self._broken(self._seq + 1, f"the log ends at seq {self._seq}, before its head "
                         f"seq {self._head}")
        if self._last:
            checked = check_line(self._last, self._hmac_key)
            if isinstance(checked, str):
                self._broken(self._seq, f"record seq {self._seq} fails its integrity check "
                             f"({failed_check(checked)})")
        if self._first is not None and self._first[0] != 1:
            start, prev = self._first
            if self._attested.get(start - 1) != prev.decode("ascii", "replace"):
                self._broken(1, f"the log starts at seq {start} and no audit.checkpoint record "
                             "attests that retention pruned the records before it")

    def _attest(self, line: bytes) -> None:
        """Learn a retention checkpoint's attestation (authenticated before it is believed)."""
        if isinstance(check_line(line, self._hmac_key), str):
            return  # not believed; the walk's own checks or finish() report the record
        details = json.loads(split_line(line)[0]).get("details") or {}  # type: ignore[index]
        last, digest = details.get("last_pruned_seq"), details.get("last_pruned_hash")
        if isinstance(last, int) and isinstance(digest, str):
            self._attested[last] = digest

    @staticmethod
    def _broken(seq: int, what: str) -> NoReturn:
        raise AuditUnavailable(f"the audit log is broken at seq {seq}: {what}; the server does "
                               f"not append to a broken chain: {_VERIFY}")


class SeqOnly:
    """ChainWalk's interface without its checks: only where the head is. For reading the log's
    change records to learn what is newest (a node joining live ones): each record believed is
    authenticated on its own (its HMAC), and none is settled from it."""

    __slots__ = ("_head", "_seq")

    def __init__(self, head_seq: int) -> None:
        self._head, self._seq = head_seq, 0

    @property
    def complete(self) -> bool:
        return self._seq >= self._head

    def step(self, raw: bytes) -> int:
        parts = split_line(raw[:-1] if raw.endswith(b"\n") else raw)
        fields = line_fields(parts[0]) if parts else None
        if fields is None:
            ChainWalk._broken(self._seq + 1, f"the record after seq {self._seq} is not a record")
        self._seq = fields[0]
        return self._seq

    def finish(self) -> None:
        """Nothing to check: a half-written last line was never stepped on (``complete``)."""
