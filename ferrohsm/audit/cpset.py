"""The signed checkpoints a verification holds a log against. Standard library only.

Sources: the log's own ``checkpoints.jsonl`` (found beside it by default), a witness's copy
(``--witness FILE``), or one checkpoint given by hand (``--checkpoint``). Two rules:

* the log must reach the NEWEST checkpoint of each source (else its tail was cut), and that
  checkpoint's signature and log id must be right;
* wherever the log holds a checkpoint's seq, its record there must have the checkpoint's hash
  (else the log was rolled back and rewritten).

Signatures cost ~2 ms each in pure Python and a busy server writes a checkpoint every few seconds,
so only the newest checkpoint of each source is verified up front. An older one is verified only
when it disagrees with the log: a hash that matches needs no signature to prove the log intact,
and a mismatch is then either a rewritten log (good signature) or a forged line (bad signature).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .chain import HEX64_RE
from .checkpoint import PublicKey, signature_ok


class CheckpointError(Exception):
    """A checkpoint contradicts the log: ``kind`` is "truncated" or "bad_checkpoint"."""

    def __init__(self, seq: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.seq, self.kind, self.detail = seq, kind, detail


def usable(cp: object) -> bool:
    """A checkpoint has an integer seq >= 1 and a hex head_hash (else it cannot be used)."""
    return (isinstance(cp, dict) and type(cp.get("seq")) is int and cp["seq"] >= 1
            and isinstance(cp.get("head_hash"), str) and bool(HEX64_RE.match(cp["head_hash"])))


@dataclass
class CheckpointSet:
    """Checkpoints by seq, each with the name of its source ("checkpoint", "witnessed")."""

    key: PublicKey | None = None
    by_seq: dict[int, list[tuple[dict[str, Any], str]]] = field(default_factory=dict)
    newest: dict[str, dict[str, Any]] = field(default_factory=dict)
    matched: int = 0

    def add(self, checkpoints: list[dict[str, Any]], source: str) -> None:
        for cp in checkpoints:
            self.by_seq.setdefault(cp["seq"], []).append((cp, source))
            if source not in self.newest or cp["seq"] >= self.newest[source]["seq"]:
                self.newest[source] = cp

    def check_signatures(self, notices: list[str]) -> None:
        """The newest checkpoint of every source must be signed by the key (when one is known)."""
        for source, cp in self.newest.items():
            if self.key is None:
                notices.append(f"{source} signature NOT checked (no public key given)")
            elif not signature_ok(cp, self.key):
                theirs, ours = cp.get("key_fingerprint"), self.key.fingerprint()
                other = (f": it names another key (fingerprint {theirs!s:.64}, the given key's "
                         f"is {ours})" if isinstance(theirs, str) and theirs != ours else "")
                raise CheckpointError(cp["seq"], "bad_checkpoint", f"the {source}'s signature "
                                      f"does not verify with the given public key{other}")

    def at(self, seq: int, digest: str, log_id: str | None = None) -> None:
        """The log's record ``seq`` has hash ``digest``: every checkpoint there must agree.
        One that does not, well signed, is a rewritten log, unless it names another log id
        (``log_id``, the log's, when known): then it is another log's checkpoint."""
        for cp, source in self.by_seq[seq]:
            if cp["head_hash"] == digest:
                self.matched += 1
                continue
            if self.key is not None and not signature_ok(cp, self.key):
                raise CheckpointError(seq, "bad_checkpoint", f"the {source} at seq {seq} does "
                                      "not match the log and its signature does not verify "
                                      "(a forged or damaged checkpoint line)")
            _same_log(cp, source, log_id)
            raise CheckpointError(seq, "truncated", f"record seq {seq} differs from the signed "
                                  f"{source}: the log was rolled back and rewritten")

    def finish(self, head_seq: int, first_seq: int, log_id: str | None,
               notices: list[str]) -> None:
        """After the last record: the log must reach the newest checkpoint of every source."""
        for source, cp in self.newest.items():
            _same_log(cp, source, log_id)
            if head_seq < cp["seq"]:
                raise CheckpointError(cp["seq"], "truncated", f"the log ends at seq {head_seq} "
                                      f"but the signed {source} of {cp.get('ts')} covers seq "
                                      f"{cp['seq']}: records {head_seq + 1}..{cp['seq']} were "
                                      "removed")
            notices.append(f"newest {source}: seq {cp['seq']} of {cp.get('ts')}")
        early = sum(len(v) for seq, v in self.by_seq.items() if first_seq and seq < first_seq)
        if early:
            notices.append(f"{early} checkpoint(s) predate the retained log")


def _same_log(cp: dict[str, Any], source: str, log_id: str | None) -> None:
    """bad_checkpoint when the checkpoint names a log id other than the log's."""
    if log_id and cp.get("log_id") and cp["log_id"] != log_id:
        raise CheckpointError(cp["seq"], "bad_checkpoint", f"the {source} belongs to another "
                              f"log (log id {cp['log_id']!r:.60}, this log's is {log_id!r}): "
                              "another key or log id")
