"""`ferrohsm audit {export,verify,report}`.

``export`` pages through ``GET /v1/audit`` and writes each record as its exact stored line
(``chain.record_line``), one per line, so the file verifies offline with ``audit verify`` and the
audit HMAC key. The file is opened (as a temporary sibling) before the first request and renamed
at the end: an unwritable path fails at once, and an interrupted export never leaves a truncated
file that would look like a tampered log.

``verify`` and ``report`` work offline and own their argument parsing (ferrohsm.audit.verify and
ferrohsm.audit.report); main() hands them their arguments untouched.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .errors import USAGE, CliExit
from .settings import OUTPUTS, Settings, UsageError, command
from .streams import Output

OFFLINE = {"verify": "verify an audit log offline with the HMAC key (exit 1 names the first bad "
                     "record)",
           "report": "summarise suspicious activity in an audit log (offline)",
           "verify-votes": "check every approval vote's signature offline against the "
                           "approver keys file"}


def add_parsers(sub: Any) -> None:
    audit = sub.add_parser("audit", help="export, verify and summarise the audit log",
                           description="Audit log tools: export reads the server; verify and "
                           "report work offline on an export or on the server's log files.",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="examples:\n  ferrohsm audit export --out audit.jsonl\n"
                           "  ferrohsm audit verify audit.jsonl --hmac-key-file audit-hmac.key "
                           "--no-checkpoints")
    asub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    p = command(asub, "export", export, help="write the audit log as JSONL (one record a line)",
                description="Export audit records (Auditor or Administrator token) as "
                "JSONL, each line exactly as the server stored it, so `ferrohsm audit verify` "
                "checks the file offline with the HMAC key.",
                conflict_handler="resolve",  # --output here is the file, as it always was
                epilog="example:\n  ferrohsm audit export --out audit.jsonl\n"
                "  ferrohsm audit verify audit.jsonl --hmac-key-file audit-hmac.key")
    p.add_argument("--out", "--output", dest="out_file", metavar="FILE", action=ExportFile,
                   help="output file, written atomically (default: stdout; --output is the "
                   "older spelling: the format is always JSONL, so --output table, json or "
                   "text is refused: write a file of that name with --out ./NAME)")
    p.add_argument("--after-seq", type=int, default=0, metavar="N",
                   help="only records after seq N (verify such a file with --partial)")
    for name, text in OFFLINE.items():
        # Placeholders so `ferrohsm audit --help` lists them; main() dispatches them before
        # argparse runs, straight to the tools' own parsers (which own their --help).
        asub.add_parser(name, help=text, add_help=False)


class ExportFile(argparse.Action):
    """``--out FILE`` (and ``--output FILE``, the spelling the README documents). On every other
    command ``--output`` takes a format, so ``audit export --output json`` would silently write
    a file named json: a format name given as ``--output`` is refused (``--out ./json`` still
    writes that file)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if option_string == "--output" and values in OUTPUTS:
            raise CliExit(f"audit export --output {values}: here --output names the file to "
                          "write (the format is always JSONL, one record a line); use --out "
                          f"FILE, or --out ./{values} for a file of that name", USAGE)
        setattr(namespace, self.dest, values)


def run_offline(name: str, argv: list[str]) -> int:
    """``audit verify`` / ``audit report`` with their own argument parsers."""
    from ..audit import verify
    if name == "verify-votes":
        from ..audit import votecheck
        return votecheck.main(argv, _ecdsa_verifier())
    return verify.main(argv) if name == "verify" else verify.report_main(argv)


def _ecdsa_verifier() -> Any:
    """EC P-256 vote checks when ``cryptography`` is importable (Ed25519 needs nothing)."""
    try:
        from ..crypto.votesig import load_public_key
    except ImportError:
        return None

    def check(pem: bytes, signature: str, message: bytes) -> bool:
        return load_public_key(pem, "approver key").verify(signature, message)
    return check


def export(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    if args.after_seq < 0:
        raise UsageError("--after-seq must be 0 or more")
    # 0600 like the log it copies: subjects, addresses and key names are for auditors only
    with Output.open(args.out_file, secret=True) as out:
        count, first, last = _write_records(client, args.after_seq, out)
        out.commit()
    if args.out_file not in (None, "-"):
        span = f"seq {first}..{last}" if count else "none"
        print(f"exported {count} audit records ({span}) to {args.out_file}", file=sys.stderr)
    return 0


def _write_records(client: Any, after_seq: int, out: Output) -> tuple[int, int, int]:
    from ..audit.chain import record_line
    count, first, last = 0, 0, 0
    for record in client.iter_audit(after_seq):
        out.write(record_line(record) + b"\n")
        count += 1
        first, last = first or int(record["seq"]), int(record["seq"])
    return count, first, last

