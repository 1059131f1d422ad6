"""``ferrohsm audit verify-votes PATH... --approver-keys FILE``: check signed votes offline.

What it answers: did each approver really cast the vote the log says they cast, without trusting
the server that wrote the log? (``audit verify`` answers whether the log is intact; it needs the
audit HMAC key, which the server holds, so it cannot tell an honest log from one a compromised
server wrote and MAC'd itself. A vote signature is made with the approver's own private key.)

For every vote record that counted (``approval.approved`` / ``approval.denied``, outcome
``success``) it rebuilds the signed message (domain/votes.py) from the record's approval id,
request hash and decision, and checks:

* ``unregistered``  the voter has no key in the approver keys file;
* ``key_mismatch``  the record names a key fingerprint other than the registered key's;
* ``message_mismatch`` the recorded message is not the one the record's fields give;
* ``bad_signature`` the signature does not verify (a forged or altered vote);
* ``unsigned``      the vote carries no signature (a failure with ``--require-signatures``);
* ``unchecked``     an EC P-256 vote when ``cryptography`` is not importable (Ed25519 is checked
                    with the standard library alone, audit/ed25519.py).

Exit 0 when every vote checks, 1 when any does not, 2 on usage errors or unreadable input.
Standard library only: the ECDSA check is injected by the caller (the CLI passes one built on
``cryptography`` when it is installed).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import sys
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..domain.strictjson import loads
from . import ed25519
from .offline import VerifyInputError, chained_lines, expand_paths, read_file

VOTE_ACTIONS = {"approval.approved": True, "approval.denied": False}
MESSAGE_TAG = "ferrohsm-vote-v1"  # the same message as domain/votes.py (kept stdlib-only here)
# (pem, base64 signature, message) -> valid?  for keys the standard library cannot check
ExtraVerifier = Callable[[bytes, str, bytes], bool]


@dataclass(frozen=True)
class RegisteredKey:
    pem: bytes
    fingerprint: str
    ed25519: bytes | None  # the raw key when it is Ed25519


def vote_message(approval_id: str, request_hash: str, approve: bool) -> bytes:
    decision = "approve" if approve else "deny"
    return (f"{MESSAGE_TAG}\napproval:{approval_id}\nrequest:{request_hash}\n"
            f"decision:{decision}\n").encode("ascii", "replace")


def _der(pem: bytes) -> bytes:
    lines = [line.strip() for line in pem.decode("ascii", "replace").splitlines()]
    try:
        start = lines.index("-----BEGIN PUBLIC KEY-----")
        end = lines.index("-----END PUBLIC KEY-----", start + 1)
        return base64.b64decode("".join(lines[start + 1:end]), validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("not a PEM public key") from None


def load_keys(path: str) -> dict[str, RegisteredKey]:
    """The approver keys file ([approvals].approver_keys_file): subject -> key."""
    try:
        doc = tomllib.loads(read_file(path).decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise VerifyInputError(f"{path}: not valid TOML ({exc})") from None
    table = doc.get("approvers")
    if not isinstance(table, dict):
        raise VerifyInputError(f"{path}: needs an [approvers] table (subject = PEM public key)")
    keys: dict[str, RegisteredKey] = {}
    for subject, pem in table.items():
        try:
            der = _der(str(pem).encode("ascii", "replace"))
        except ValueError as exc:
            raise VerifyInputError(f"{path}: {subject!r:.40}: {exc}") from None
        try:
            raw: bytes | None = ed25519.public_key_from_der(der)
        except ValueError:
            raw = None
        keys[subject] = RegisteredKey(str(pem).encode("ascii", "replace"),
                                      "sha256:" + hashlib.sha256(der).hexdigest(), raw)
    return keys


def _verdict(rec: dict[str, Any], keys: dict[str, RegisteredKey],
             extra: ExtraVerifier | None) -> str:
    details = rec.get("details") or {}
    signature = details.get("vote_signature")
    if not signature:
        return "unsigned"
    key = keys.get(str(rec.get("actor")))
    if key is None:
        return "unregistered"
    if details.get("vote_key_fingerprint") != key.fingerprint:
        return "key_mismatch"
    message = vote_message(str(details.get("approval_id")), str(details.get("request_hash")),
                           VOTE_ACTIONS[str(rec.get("action"))])
    if str(details.get("vote_message", "")).encode("ascii", "replace") != message:
        return "message_mismatch"
    if key.ed25519 is not None:
        try:
            raw = base64.b64decode(str(signature), validate=True)
        except (binascii.Error, ValueError):
            return "bad_signature"
        return "ok" if ed25519.verify(key.ed25519, message, raw) else "bad_signature"
    if extra is None:
        return "unchecked"
    try:
        return "ok" if extra(key.pem, str(signature), message) else "bad_signature"
    except ValueError:
        return "bad_signature"


def check_votes(records: Iterable[dict[str, Any] | None], keys: dict[str, RegisteredKey],
                extra: ExtraVerifier | None = None) -> list[dict[str, Any]]:
    """One row per counted vote: seq, actor, approval, decision and verdict."""
    rows = []
    for rec in records:
        if not rec or rec.get("action") not in VOTE_ACTIONS or rec.get("outcome") != "success":
            continue
        details = rec.get("details") or {}
        rows.append({"seq": rec.get("seq"), "actor": rec.get("actor"),
                     "approval_id": details.get("approval_id"),
                     "decision": "approve" if VOTE_ACTIONS[rec["action"]] else "deny",
                     "verdict": _verdict(rec, keys, extra)})
    return rows


def _records(paths: list[str]) -> Iterator[dict[str, Any] | None]:
    for raw in chained_lines(expand_paths(paths)):
        try:
            value = loads(raw)
        except ValueError:
            yield None
            continue
        yield value if isinstance(value, dict) else None


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def votes_parser() -> argparse.ArgumentParser:
    """The command line of ``ferrohsm audit verify-votes``."""
    parser = _Parser(prog="ferrohsm audit verify-votes",
                     description="Check every approval vote's signature offline against the "
                     "approver keys file: exit 0 if all check, 1 if any does not, 2 on usage "
                     "errors. Run `audit verify` too: it checks the log is intact.",
                     allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="example:\n  ferrohsm audit verify-votes audit.jsonl "
                     "--approver-keys approvers.toml --require-signatures")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="audit directory, segment files, exported JSONL, or SQLite database")
    parser.add_argument("--approver-keys", required=True, metavar="FILE",
                        help="the approver keys file ([approvals].approver_keys_file)")
    parser.add_argument("--require-signatures", action="store_true",
                        help="an unsigned vote is a failure too")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


BAD = {"unregistered", "key_mismatch", "message_mismatch", "bad_signature", "unchecked"}


def main(argv: list[str] | None = None, extra: ExtraVerifier | None = None) -> int:
    try:
        args = votes_parser().parse_args(argv)
        rows = check_votes(_records(args.paths), load_keys(args.approver_keys), extra)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (_UsageError, VerifyInputError) as exc:
        print(f"ferrohsm audit verify-votes: error: {exc}", file=sys.stderr)
        return 2
    bad = BAD | ({"unsigned"} if args.require_signatures else set())
    failed = [r for r in rows if r["verdict"] in bad]
    if args.json:
        print(json.dumps({"votes": rows, "failed": len(failed)}, indent=2))
    else:
        for r in rows:
            print(f"seq {r['seq']}: {r['decision']} of approval {r['approval_id']} by "
                  f"{json.dumps(r['actor'])}: {r['verdict']}")
        print(f"{len(rows)} vote(s), {len(failed)} failed")
    return 1 if failed else 0
