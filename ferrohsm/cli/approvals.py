"""`ferrohsm approvals {list,show,approve,deny}`: dual control from the command line.

A request on a key whose tags require a quorum is parked (the CLI prints the approval id and
exits 1); distinct approvers other than the requester approve it here; the requester then repeats
the original command with ``--approval-id ID`` and it runs once.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import Any

from ..domain.model import is_uuid
from . import output
from .settings import Settings, UsageError, command

STATES = ("pending", "approved", "denied", "expired", "executed")
NAME_PAGES = 50  # 50,000 keys looked through for the names of an approval listing's keys


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
        p.add_argument("--signing-key", metavar="FILE",
                       help="sign the vote with this Ed25519 or EC P-256 private key (PEM, "
                       "mode 0600; password in FERROHSM_SIGNING_KEY_PASSWORD if encrypted): "
                       "needed when the server sets [approvals].require_vote_signature")
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
    names = {} if settings.output == "json" or settings.field else \
        key_names(client, {str(a.get("key_id")) for a in items})
    output.emit(settings, {**page, "approvals": items},
                lambda: output.approval_table(items, output.use_colour(sys.stdout), names),
                lambda: [output.approval_values(a, names) for a in items])
    return 0


def key_names(client: Any, ids: set[str]) -> dict[str, str]:
    """The names of the keys ``ids`` (approvals name keys by id), from one key listing followed
    page by page until every id is found, not one call per approval. A key the caller cannot
    see, one since gone, an unnamed one, or a listing refused keeps its id (not in the map)."""
    from ..client import ApiError
    missing = {i for i in ids if is_uuid(i)}  # "system": a rekey's approval names no key
    names: dict[str, str] = {}
    token = None
    for _ in range(NAME_PAGES):
        if not missing:
            break
        try:
            page = client.list_keys(limit=1000, page_token=token)
        except ApiError:
            break
        for key in page.get("keys") or []:
            if key.get("id") in missing:
                missing.discard(key["id"])
                if key.get("name"):
                    names[key["id"]] = str(key["name"])
        token = page.get("next_page_token")
        if not token:
            break
    return names


def show(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    approval = client.get_approval(args.approval_id_arg)
    name = None if settings.output == "json" or settings.field else \
        _key_name(client, approval.get("key_id"))
    output.emit(settings, approval,
                lambda: output.approval_detail(approval, output.use_colour(sys.stdout), name))
    return 0


def _key_name(client: Any, key_id: Any) -> str | None:
    """The approval's key's name, as the listing shows it (None: no key, unnamed, not
    visible to this token, or gone)."""
    from ..client import ApiError
    if not isinstance(key_id, str) or not is_uuid(key_id):
        return None
    try:
        name = client.get_key(key_id).get("name")
    except ApiError:
        return None
    return str(name) if name else None


def decide(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    call = client.approve if args.verb == "approve" else client.deny
    signature = None
    if args.signing_key:
        signature = sign_vote(client, args.approval_id_arg, args.verb == "approve",
                              args.signing_key)
    result = call(args.approval_id_arg, args.comment, signature=signature)
    approval = result.get("approval", result) if isinstance(result, dict) else result
    done = "Approved" if args.verb == "approve" else "Denied"
    output.emit(settings, result, lambda: f"{done} {args.approval_id_arg}.\n\n"
                + output.approval_detail(approval, output.use_colour(sys.stdout)))
    return 0


def sign_vote(client: Any, approval_id: str, approve: bool, key_file: str) -> str:
    """Fetch the approval, build the vote message (domain/votes.py) from ITS request hash and
    sign it here: the private key never leaves this machine."""
    from ..crypto.votesig import sign_vote as sign  # cryptography: only when signing
    from ..domain.votes import vote_message
    pem = _private_key_bytes(key_file)
    approval = client.get_approval(approval_id)
    try:
        message = vote_message(str(approval.get("id")), str(approval.get("request_hash")),
                               approve)
        password = os.environ.get("FERROHSM_SIGNING_KEY_PASSWORD")
        signature, fingerprint = sign(pem, message, password.encode() if password else None)
    except ValueError as exc:
        raise UsageError(f"--signing-key {key_file}: {exc}") from None
    print(f"signed the vote with key {fingerprint}", file=sys.stderr)
    return signature


def _private_key_bytes(path: str) -> bytes:
    """The signing key file: a regular file only its owner may read (it is a secret)."""
    try:
        with open(path, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
                raise UsageError(f"--signing-key {path} must be a regular file only its owner "
                                 "can read (chmod 600)")
            return fh.read(1 << 16)
    except OSError as exc:
        raise UsageError(f"--signing-key: cannot read {path}: {exc.strerror}") from None
