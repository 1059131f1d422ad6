"""Offline audit log verifier: ``ferrohsm audit verify PATH...``. Standard library only.

It needs the HMAC key and nothing else: no third-party package, not even to check an Ed25519-signed
checkpoint (checkpoint.py, with the pure-Python verification of ed25519.py). Inputs, concatenated in the order given, form one
chain: a file sink directory (its ``audit-NNNNNN.jsonl`` segments in numeric order), segment files,
an exported JSONL file, or an SQLite sink database (recognised by its header).

Speed: canonical lines are checked on their stored bytes (see chain.py): slice the body out, one
SHA-256, one HMAC, two ``rfind``s — no JSON parsing and no re-serialising in the common case. Lines
written in another JSON layout (an export that re-encoded records) take a slower path that parses,
rejects duplicate keys (so two parsers cannot disagree about a record) and re-canonicalises.

How problems are told apart, at the first record that is not the expected next one:

* ``torn_line``  the input's last line is incomplete (a crash mid-write): no newline ends it,
                 even when what is there is a whole record, as the server cuts it at start-up
                 (it writes a record and its newline in one write and acknowledges after fsync).
* ``malformed``  a line that is not a record at all, or has an unknown schema version.
* ``modified``   the record's content no longer matches its ``hash``.
* ``bad_hmac``   the hash matches but the HMAC does not (content and hash rewritten without the
                 key, a forged hmac, or the wrong key).
* ``inserted``   a forged record (fails its own check) after which the chain continues as if it
                 were absent; or an authentic record where it does not belong: a seq seen before
                 (duplicated, replayed) or one that links to a different chain (spliced in).
* ``reordered``  the expected seq is missing here but appears later in the input, or records from
                 before the input's first seq come after it (files given in the wrong order).
* ``deleted``    the expected seq never appears (a gap), or the log starts after seq 1 without an
                 ``audit.checkpoint`` record attesting that retention pruned the missing prefix.
* ``truncated``  the log ends before the newest signed checkpoint (of its own checkpoints file,
                 of a witness, or the one given), or its record at a checkpoint's seq differs.
* ``bad_checkpoint`` a checkpoint's signature or log id does not match, or a complete line of a
                 checkpoints file (beside the log or given) is not a checkpoint.
* ``no_checkpoints`` the server's log layout (a file sink directory, an SQLite sink database) has
                 no ``checkpoints.jsonl`` beside it, or an empty one, or a ``--checkpoint`` /
                 ``--witness`` file given holds none: they were deleted, and a cut tail would go
                 unseen. ``--no-checkpoints`` verifies the chain alone, and says so loudly.

Checkpoints: by default the command uses the ``checkpoints.jsonl`` and the public key
(``audit-signing-key.pub.pem``) it finds beside the log (the directory given, or the directory of
the database or file given last); ``--checkpoint`` and ``--public-key`` override them. ``--witness
FILE`` adds a witness's copy of the checkpoints (see witness.py): the log must reach its newest one
and match every one it holds. cpset.py has the rules.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import itertools
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from ..domain.strictjson import loads
from . import toolout
from .chain import (
    BODY_END,
    END_TAG,
    GENESIS_HASH,
    HASH_TAG,
    HEX64_RE,
    HMAC_TAG,
    PREV_TAG,
    RECORD_FIELDS,
    SEQ_TAG,
    SUFFIX_LEN,
    canonical,
    line_fields,
    split_line,
    stored_seq,
)
from .checkpoint import PublicKey
from .cpset import CheckpointError, CheckpointSet, usable
from .offline import (
    SQLITE_MAGIC,
    VerifyInputError,
    chained_lines,
    expand_paths,
    file_lines,
    load_checkpoint,
    load_hmac_key,
    read_checkpoints,
    read_file,
)
from .report import report_main

__all__ = ["VerifyInputError", "VerifyResult", "load_checkpoint", "load_hmac_key", "main",
           "report_main", "verify_paths"]

AUDIT_ACTION = b'{"action":"audit.'
CHECKPOINT_FILE = "checkpoints.jsonl"  # the names anchor.py gives them beside the log
PUBLIC_KEY_FILE = "audit-signing-key.pub.pem"
SKIPPED = ("checkpoints NOT checked (--no-checkpoints): a log whose last records were cut off "
           "verifies like an intact one")
NONE_FOUND = (f"checkpoints NOT checked: none given and no {CHECKPOINT_FILE} beside the input, "
              "so a file whose last records were cut off verifies like an intact one; give "
              "--checkpoint NODE/audit/checkpoints.jsonl (copied before the export) or --witness")
_HT = HASH_TAG
_MT = HMAC_TAG
_END = END_TAG + b"\n"
_V = BODY_END[:-1]  # ',"v":1' just before the hash field in a stored line
_S = SUFFIX_LEN + 1  # the suffix plus the newline


@dataclass
class VerifyResult:
    ok: bool
    records_checked: int
    head_seq: int
    head_hash: str
    problem: dict[str, Any] | None = None  # {"seq", "kind", "detail"}
    first_seq: int = 0
    log_id: str | None = None
    notices: list[str] = field(default_factory=list)
    checkpoints_matched: int = 0  # checkpoints (any source) whose seq the log holds, all agreeing
    checkpoints_skipped: bool = False


class _Rec(NamedTuple):
    seq: int
    prev: bytes
    body: bytes
    digest: bytes
    mac: bytes


_Problem = CheckpointError  # one exception for every problem found: seq, kind, detail


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def _parse(line: bytes) -> _Rec | None:
    """A stored line (no newline) as a record, canonical or not; None if it is not a record."""
    parts = split_line(line)
    fields = line_fields(parts[0]) if parts else None
    if parts and fields:
        return _Rec(fields[0], fields[1], parts[0], parts[1], parts[2])
    try:
        obj = loads(line, object_pairs_hook=_no_duplicates)
    except ValueError:
        return None
    if (not isinstance(obj, dict) or set(obj) != set(RECORD_FIELDS) | {"hash", "hmac"}
            or obj["v"] != 1 or type(obj["seq"]) is not int
            or not all(isinstance(obj[k], str) and HEX64_RE.match(obj[k])
                       for k in ("prev_hash", "hash", "hmac"))):
        return None
    return _Rec(obj["seq"], obj["prev_hash"].encode(), canonical(obj), obj["hash"].encode(),
                obj["hmac"].encode())


class _Verifier:
    """Walks the chain; state carries across input files."""

    def __init__(self, key: bytes, checkpoints: CheckpointSet, partial: bool) -> None:
        self.key = key
        self.partial = partial
        self.cps = checkpoints
        self.count = 0
        self.seq = 0
        self.prev = GENESIS_HASH.encode()
        self.first_seq = 0
        self.pending_start: tuple[int, bytes] | None = None
        self.attested: dict[int, str] = {}  # last_pruned_seq -> last_pruned_hash
        self.log_id: str | None = None
        self.notices: list[str] = []
        self.unit = "line"  # "row" of an SQLite database

    def run(self, name: str, lines: Iterator[bytes], rest: Iterator[bytes], last: bool) -> None:
        """Check every line of one input. ``rest`` continues past this input, for look-ahead."""
        key, sha, mac, same = self.key, hashlib.sha256, hmac.digest, hmac.compare_digest
        expect, prev, at_cp = self.seq + 1, self.prev, self.cps.by_seq
        for number, raw in enumerate(lines, 1):
            body = raw[:-_S] + b"}"
            digest = raw[-_S + 9:-_S + 73]
            i = body.rfind(PREV_TAG) + 13
            j = body.rfind(SEQ_TAG) + 6
            if (raw[-3:] == _END and raw[-_S:-_S + 9] == _HT and raw[-77:-67] == _MT
                    and raw[-_S - 6:-_S] == _V and i > 12 and j > 5
                    and body[i:i + 64] == prev and body[j:body.find(b",", j)] == b"%d" % expect
                    and sha(prev + body).hexdigest().encode() == digest
                    and same(mac(key, digest, "sha256").hex().encode(), raw[-67:-3])):
                seq = expect
            else:
                self.seq, self.prev = expect - 1, prev
                rec = self._slow(raw, itertools.chain(lines, rest), name, number, last)
                seq, digest, body = rec.seq, rec.digest, rec.body
            if body.startswith(AUDIT_ACTION):
                self._system_record(seq, body)
            if seq in at_cp:
                self.cps.at(seq, digest.decode(), self.log_id)
            self.count += 1
            expect, prev = seq + 1, digest
        self.seq, self.prev = expect - 1, prev

    # ---- the slow path: anything that is not the next canonical, authentic, linked record ----

    def _slow(self, raw: bytes, rest: Iterator[bytes], name: str, number: int,
              last: bool) -> _Rec:
        expect = self.seq + 1
        complete = raw.endswith(b"\n")
        if not complete and last:  # the server writes a record and its newline in one write
            raise _Problem(expect, "torn_line", f"the last line of {name} is incomplete "
                           f"({len(raw)} bytes): a crash during a write, never acknowledged")
        rec = _parse(raw[:-1] if complete else raw)
        if rec is None:
            raise _Problem(expect, "malformed", f"{self.unit} {number} of {name} is not an audit record")
        kind = self._integrity(rec)
        if kind is not None:
            following = self._authentic(next(rest, None))
            if following is not None and (following.seq, following.prev) == (expect, self.prev):
                raise _Problem(expect, "inserted", f"{self.unit} {number} of {name} is a forged record "
                               f"(it fails its {'hash' if kind == 'modified' else 'HMAC'} check) "
                               f"placed before seq {expect}; the chain continues without it")
            what = "its content does not match its hash" if kind == "modified" else \
                "its HMAC does not match (forged, or the wrong key)"
            raise _Problem(expect, kind, f"{self.unit} {number} of {name}: {what}")
        if (rec.seq, rec.prev) != (expect, self.prev):
            self._out_of_place(rec, rest)
        if self.count == 0:
            self.first_seq = rec.seq
        return rec

    def _integrity(self, rec: _Rec) -> str | None:
        if hashlib.sha256(rec.prev + rec.body).hexdigest().encode() != rec.digest:
            return "modified"
        if not hmac.compare_digest(hmac.digest(self.key, rec.digest, "sha256").hex().encode(),
                                   rec.mac):
            return "bad_hmac"
        return None

    def _authentic(self, raw: bytes | None) -> _Rec | None:
        rec = _parse(raw.rstrip(b"\n")) if raw else None
        return rec if rec is not None and self._integrity(rec) is None else None

    def _out_of_place(self, rec: _Rec, rest: Iterator[bytes]) -> None:
        """An authentic record that is not the expected next one: accept or classify."""
        expect = self.seq + 1
        if self.count == 0:  # the log starts mid-chain: pruned, partial export, or cut
            if self.partial:
                self.notices.append(f"log starts at seq {rec.seq}; its prev_hash is trusted "
                                    "(--partial)")
            else:
                self.pending_start = (rec.seq, rec.prev)
            return
        if rec.seq > expect:
            if any(_seq_of(line) == expect for line in rest):
                raise _Problem(expect, "reordered", f"record seq {expect} appears later in the "
                               f"log, after seq {rec.seq}: records are out of order")
            missing = str(expect) if rec.seq == expect + 1 else f"{expect}..{rec.seq - 1}"
            raise _Problem(expect, "deleted", f"record seq {missing} missing: seq {self.seq} is "
                           f"followed by seq {rec.seq}")
        if rec.seq < (self.first_seq or 1):  # from before where the input started
            raise _Problem(rec.seq, "reordered", f"record seq {rec.seq} appears after seq "
                           f"{self.seq}: records (or whole files) are out of order")
        if rec.seq < expect:
            raise _Problem(expect, "inserted", f"record seq {rec.seq} appears again where seq "
                           f"{expect} was expected (duplicated or replayed)")
        raise _Problem(expect, "inserted", f"record seq {expect} does not link to seq "
                       f"{self.seq}: an authentic record spliced in from another log")

    def _system_record(self, seq: int, body: bytes) -> None:
        """The sink's own records: learn the log id, prune attestations, recovery notes."""
        try:
            obj = loads(body)
        except ValueError:  # authentic, yet not JSON: written with the key, not by a server
            raise _Problem(seq, "malformed", f"record seq {seq} is not a JSON object") from None
        details = obj.get("details") or {}
        if isinstance(details.get("log_id"), str) and self.log_id is None:
            self.log_id = details["log_id"]
        if obj["action"] == "audit.recovery":
            self.notices.append(f"seq {seq}: {obj['message']}")
        elif obj["action"] == "audit.checkpoint":
            last, digest = details.get("last_pruned_seq"), details.get("last_pruned_hash")
            if isinstance(last, int) and isinstance(digest, str):
                self.attested[last] = digest
                self.notices.append(f"seq {seq}: {obj['message']}")

    # ---- after the last record ------------------------------------------------------------------

    def finish(self) -> None:
        if self.count == 0 and self.partial:  # `audit export --after-seq N` with nothing new
            self.notices.append("the input holds no audit records: nothing to check (--partial)")
            return
        if self.count == 0:
            raise _Problem(1, "deleted", "the input holds no audit records at all")
        if self.pending_start is not None:
            start, prev = self.pending_start
            if self.attested.get(start - 1) != prev.decode():
                raise _Problem(1, "deleted", f"the log starts at seq {start}: records before it "
                               "are missing and no audit.checkpoint record attests their pruning")
            self.notices.append(f"log starts at seq {start} after retention pruning "
                                "(attested by an audit.checkpoint record)")
        self.cps.finish(self.seq, self.first_seq, self.log_id, self.notices)


def _seq_of(raw: bytes) -> int | None:
    seq = stored_seq(raw)
    if seq is None:
        rec = _parse(raw.rstrip(b"\n"))
        seq = rec.seq if rec else None
    return seq


# ---- inputs -------------------------------------------------------------------------------------

def verify_paths(paths: list[str], hmac_key: bytes, checkpoint: dict[str, Any] | None = None,
                 public_key_pem: bytes | None = None, *, partial: bool = False,
                 checkpoints: list[dict[str, Any]] | None = None,
                 witnessed: list[dict[str, Any]] | None = None) -> VerifyResult:
    """Verify the chain formed by ``paths`` (in order); see the module docstring for the kinds.

    ``checkpoint`` (one) or ``checkpoints`` (a checkpoints file's lines) and ``witnessed`` (a
    witness's) are held against the log (cpset.py). Raises VerifyInputError when the inputs
    cannot be read at all.
    """
    files = expand_paths(paths)
    anchors = _checkpoint_set(checkpoint, checkpoints, witnessed, public_key_pem)
    verifier = _Verifier(hmac_key, anchors, partial)
    problem: _Problem | None = None
    try:
        anchors.check_signatures(verifier.notices)
        for index, path in enumerate(files):
            lines, rest = file_lines(path), chained_lines(files[index + 1:])
            verifier.unit = "row" if _is_sqlite(path) else "line"
            try:
                verifier.run(path, lines, rest, index == len(files) - 1)
            finally:
                lines.close()
                rest.close()
        verifier.finish()
    except _Problem as exc:
        problem = exc
    return VerifyResult(
        ok=problem is None, records_checked=verifier.count, head_seq=verifier.seq,
        head_hash=verifier.prev.decode(),
        first_seq=verifier.first_seq or (1 if verifier.count else 0),
        log_id=verifier.log_id, notices=verifier.notices, checkpoints_matched=anchors.matched,
        problem=None if problem is None else
        {"seq": problem.seq, "kind": problem.kind, "detail": problem.detail})


# ---- checkpoints ------------------------------------------------------------------------------

def _checkpoint_set(checkpoint: dict[str, Any] | None,
                    checkpoints: list[dict[str, Any]] | None,
                    witnessed: list[dict[str, Any]] | None,
                    public_key_pem: bytes | None) -> CheckpointSet:
    key = None
    if public_key_pem is not None:
        try:
            key = PublicKey.from_pem(public_key_pem)
        except ValueError as exc:
            raise VerifyInputError(f"the public key: {exc}") from None
    anchors = CheckpointSet(key)
    for source, given in (("checkpoint", [checkpoint] if checkpoint is not None else []),
                          ("checkpoint", checkpoints or []),
                          ("witnessed checkpoint", witnessed or [])):
        if not all(usable(cp) for cp in given):
            raise VerifyInputError("the checkpoint needs an integer seq >= 1 and a hex head_hash")
        anchors.add(given, source)
    return anchors


# ---- command line -----------------------------------------------------------------------------

class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def verify_parser() -> argparse.ArgumentParser:
    """The command line of ``ferrohsm audit verify`` (also walked for --help, completion and
    the manual page)."""
    return _parser()


def _parser() -> _Parser:
    parser = _Parser(prog="ferrohsm audit verify", description="Verify an audit log offline: "
                     "exit 0 if intact, 1 naming the first bad record, 2 on usage errors. The "
                     "checkpoints.jsonl and public key beside the log are used by default.",
                     allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="examples:\n"
                     "  ferrohsm audit verify ferrohsm-data/audit --hmac-key-file "
                     "ferrohsm-data/audit-hmac.key\n"
                     "  ferrohsm audit export --out audit.jsonl && ferrohsm audit verify "
                     "audit.jsonl --hmac-key-file ferrohsm-data/audit-hmac.key "
                     "--no-checkpoints")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="audit directory, segment files, exported JSONL, or SQLite database")
    parser.add_argument("--hmac-key-file", metavar="FILE",
                        help="0600 file with the audit HMAC key (default: FERROHSM_AUDIT_HMAC_KEY)")
    parser.add_argument("--checkpoint", metavar="FILE",
                        help="signed checkpoints: a JSON checkpoint or a checkpoints.jsonl "
                        "(default: checkpoints.jsonl beside the log)")
    parser.add_argument("--public-key", metavar="FILE", help="PEM Ed25519 audit signing key "
                        "(default: audit-signing-key.pub.pem beside the log or beside "
                        "--checkpoint); checkpoints are refused without one")
    parser.add_argument("--witness", metavar="FILE", help="a witness's checkpoints.jsonl: the log "
                        "must reach its newest checkpoint and match every one")
    parser.add_argument("--no-checkpoints", action="store_true",
                        help="check the chain only, without the checkpoints beside the log "
                        "(a cut tail then goes unseen; the result says so)")
    parser.add_argument("--partial", action="store_true",
                        help="accept a log that starts mid-chain (an export after some seq)")
    toolout.add_output_flags(parser)
    return parser


@dataclass
class _Sources:
    """What the log is held against, as found from the arguments and beside the log."""

    checkpoints: list[dict[str, Any]] | None
    witnessed: list[dict[str, Any]] | None
    public_key_pem: bytes | None
    missing: str | None = None  # why the absence of checkpoints is itself a failure
    broken: str | None = None  # a line of a checkpoints file that is not a checkpoint


def _load(path: str, found: _Sources) -> list[dict[str, Any]]:
    """The checkpoints of a file given or found; a line that is not one is remembered as a
    bad_checkpoint finding (someone else wrote it), not a usage error."""
    checkpoints, problem = read_checkpoints(path)
    if problem is not None and found.broken is None:
        found.broken = (f"{problem}: a checkpoints file holds only signed checkpoints, so the "
                        "file was written by someone other than the server")
    return checkpoints


def _empty(path: str, what: str) -> str:
    return (f"the {what} file {path} holds no checkpoint: the server writes one from the first "
            "record on, so it was emptied or is the wrong file and a cut tail cannot be seen")


def _beside(paths: list[str], name: str) -> str | None:
    """``name`` in the directory given last, or beside the file given last, if it exists."""
    last = paths[-1]
    candidate = os.path.join(last if os.path.isdir(last) else os.path.dirname(last) or ".", name)
    return candidate if os.path.isfile(candidate) else None


def _is_sqlite(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _server_layout(path: str) -> bool:
    """A file sink directory or an SQLite sink database: the server always keeps checkpoints
    beside those (from the first record on), unlike beside an exported file."""
    return os.path.isdir(path) or _is_sqlite(path)


def _sources(args: argparse.Namespace) -> _Sources:
    key_path = (args.public_key or _beside(args.paths, PUBLIC_KEY_FILE)
                or (_beside([args.checkpoint], PUBLIC_KEY_FILE) if args.checkpoint else None))
    found = _Sources(None, None, read_file(key_path) if key_path else None)
    if args.witness:
        found.witnessed = _load(args.witness, found)
        if not found.witnessed:
            found.missing = _empty(args.witness, "--witness")
    if args.no_checkpoints:
        return found
    path = args.checkpoint or _beside(args.paths, CHECKPOINT_FILE)
    found.checkpoints = _load(path, found) if path else None
    if args.checkpoint and not found.checkpoints:
        found.missing = _empty(args.checkpoint, "--checkpoint")
    if (found.checkpoints or found.witnessed) and found.public_key_pem is None:
        # anyone can write a checkpoint line; only its signature makes it evidence
        raise VerifyInputError(
            f"checkpoints to check but no public key to check their signatures: give "
            f"--public-key FILE (the server keeps {PUBLIC_KEY_FILE} beside its log), or "
            "--no-checkpoints to check the chain alone")
    if not found.checkpoints and not args.checkpoint and _server_layout(args.paths[-1]):
        found.missing = (f"no signed checkpoints ({CHECKPOINT_FILE}) beside the log: the server "
                         "writes them from the first record on, so they were deleted and a cut "
                         "tail cannot be seen. Give --checkpoint or --witness, or "
                         "--no-checkpoints to check the chain alone")
    return found


def main(argv: list[str] | None = None) -> int:
    """``ferrohsm audit verify``: 0 verified, 1 a problem was found, 2 usage error."""
    try:
        args = _parser().parse_args(argv)
        toolout.output_format(args)
        key = load_hmac_key(args.hmac_key_file)
        found = _sources(args)
        result = verify_paths(args.paths, key, None, found.public_key_pem,
                              partial=args.partial, checkpoints=found.checkpoints,
                              witnessed=found.witnessed)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (_UsageError, VerifyInputError, toolout.OutputChoiceError) as exc:
        print(f"ferrohsm audit verify: error: {exc}", file=sys.stderr)
        return 2
    _judge(result, found, args.no_checkpoints)
    try:
        print(toolout.render(args, asdict(result), lambda: _human(result)))
    except toolout.OutputChoiceError as exc:  # a --field the result does not have
        print(f"ferrohsm audit verify: error: {exc}", file=sys.stderr)
        return 2
    return 0 if result.ok else 1


def _human(result: Any) -> str:
    return "\n".join([_summary(result), *(f"note: {n}" for n in result.notices)])


def _judge(result: VerifyResult, found: _Sources, skipped: bool) -> None:
    """Missing checkpoints fail a chain that is otherwise intact; skipping them, or having
    none to hold an export against, is announced as loudly."""
    if skipped:
        result.checkpoints_skipped = True
        result.notices.insert(0, SKIPPED)
    elif not found.checkpoints and not found.witnessed and not found.missing:
        result.checkpoints_skipped = True
        result.notices.insert(0, NONE_FOUND)
    for kind, detail in (("bad_checkpoint", found.broken), ("no_checkpoints", found.missing)):
        if detail is None:
            continue
        if result.ok:
            result.ok = False
            result.problem = {"seq": result.head_seq, "kind": kind, "detail": detail}
        else:
            result.notices.append(f"also {kind}: {detail}")


def _summary(result: VerifyResult) -> str:
    if result.problem is None:
        loud = " (WARNING: checkpoints NOT checked)" if result.checkpoints_skipped else ""
        return (f"OK{loud}: {result.records_checked} records verified, head seq "
                f"{result.head_seq} hash {result.head_hash}")
    p = result.problem
    return f"FAIL: record seq {p['seq']}: {p['kind']}: {p['detail']}"
