"""`ferrohsm approvals {list,show,approve,deny}`: dual control from the command line.

A request on a key whose tags require a quorum is parked (the CLI prints the approval id and
exits 1); distinct approvers other than the requester approve it here; the requester then repeats
the original command with ``--approval-id ID`` and it runs once.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import output
from .settings import Settings, command

STATES = ("pending", "approved", "denied", "expired", "executed")


def add_parsers(sub: Any) -> None:
    approvals = sub.add_parser("approvals", help="list, approve and deny dual-control requests",
                               description="Dual control: requests on keys whose tags require "
                               "a quorum wait here for distinct approvers.",
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog="examples:\n  ferrohsm approvals list --state pending\n"
                               "  ferrohsm approvals approve 3d5c0f7e-… --comment 'ticket 42'")
    asub = approvals.add_subparsers(dest="approvals_command", metavar="SUBCOMMAND",
                                    required=True)
    p = command(asub, "list", list_approvals, help="list approval requests",
                description="List approval requests (all states unless --state).",
                epilog="example:\n  ferrohsm approvals list --state pending")
    p.add_argument("--state", choices=STATES, help="only requests in this state")
    p = command(asub, "show", show, help="describe one approval request",
                description="Describe one approval request: what it would do, who asked, who "
                "approved, its state and when it expires.",
                epilog="example:\n  ferrohsm approvals show 3d5c0f7e-…")
    p.add_argument("approval_id_arg", metavar="ID", help="the approval id")
    for verb, text in (("approve", "approve a pending request (you must not be its requester)"),
                       ("deny", "refuse a pending request")):
        p = command(asub, verb, decide, help=text,
                    description=f"{text[0].upper()}{text[1:]}. Once the quorum is met the "
                    "requester repeats the original command with --approval-id ID.",
                    epilog=f"example:\n  ferrohsm approvals {verb} 3d5c0f7e-…")
        p.add_argument("approval_id_arg", metavar="ID", help="the approval id")
        p.add_argument("--comment", help="why (kept with the vote and in the audit log)")
        p.set_defaults(verb=verb)


def list_approvals(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    items: list[dict[str, Any]] = []
    token = None
    while True:  # follow pages: a pending queue is short, a history may not be
        page = client.list_approvals(args.state, page_token=token)
        items.extend(page.get("approvals") or [])
        token = page.get("next_page_token")
        if not token:
            break
    output.emit(settings, {**page, "approvals": items},
                lambda: output.approval_table(items, output.use_colour(sys.stdout)),
                lambda: [output.approval_row(a) for a in items])
    return 0


def show(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    approval = client.get_approval(args.approval_id_arg)
    output.emit(settings, approval,
                lambda: output.approval_detail(approval, output.use_colour(sys.stdout)))
    return 0


def decide(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    call = client.approve if args.verb == "approve" else client.deny
    result = call(args.approval_id_arg, args.comment)
    approval = result.get("approval", result) if isinstance(result, dict) else result
    done = "Approved" if args.verb == "approve" else "Denied"
    output.emit(settings, result, lambda: f"{done} {args.approval_id_arg}.\n\n"
                + output.approval_detail(approval, output.use_colour(sys.stdout)))
    return 0
