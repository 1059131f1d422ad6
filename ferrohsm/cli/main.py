"""`ferrohsm`: one executable for the server, its operators and its auditors.

argparse builds the command tree; each subcommand lives in a small module and returns an exit
code: 0 success, 1 operation failed or refused, 2 usage error. No traceback ever reaches a user.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import ConfigError, FerroError
from . import serve as serve_cmd
from . import token as token_cmd


class Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep its one-line message."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ferrohsm", description="FerroHSM: a software HSM with a TLS REST API, "
                    "sealed keys and a tamper-evident audit log.")
    parser.add_argument("--version", action="version", version=f"ferrohsm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve_cmd.add_parsers(sub)
    token_cmd.add_parser(sub)
    audit = sub.add_parser("audit", help="verify, export and summarise the audit log",
                           description="Audit log tools for auditors (work offline).")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    for name, text in (("verify", "verify an audit log offline with the HMAC key"),
                       ("report", "summarise suspicious activity in an audit log")):
        p = audit_sub.add_parser(name, help=text, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args)) if hasattr(args, "func") else _audit(args, parser)
    except ConfigError as exc:
        print(f"ferrohsm: configuration error: {exc.message}", file=sys.stderr)
        return 2
    except FerroError as exc:
        print(f"ferrohsm: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _audit(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..audit import verify
    if args.audit_command == "verify":
        return verify.main(args.args)
    if args.audit_command == "report":
        return verify.report_main(args.args)
    parser.parse_args(["audit", "--help"])
    return 2


if __name__ == "__main__":
    sys.exit(main())
