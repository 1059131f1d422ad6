"""`ferrohsm keys …`: create, list, show, update, rotate, rollback, revoke, destroy,
destroy-version, cancel-destroy, public-key and import (importkey.py). Parsing and printing only;
the server decides everything."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import importkey, output
from .settings import Settings, approval_flag, command, unverified_claims
from .streams import Output

ALGORITHMS = ("aes-256-gcm", "rsa-2048", "rsa-4096", "ec-p256", "ec-p384")
USAGES = ("encrypt", "wrap", "sign")
STATES = ("active", "revoked", "destroy_scheduled", "destroyed")


def add_parsers(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create, import, list, describe, rotate, revoke and "
                          "destroy keys",
                          description="Key lifecycle. KEY is a key's id or its unique name.",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="examples:\n  ferrohsm keys list --tag pci\n"
                          "  ferrohsm keys show payments --field primary_version")
    ksub = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    _create(ksub)
    _list(ksub)
    p = command(ksub, "show", show, help="describe a key: state, versions, tags, history",
                description="Describe KEY: state, primary version, every version, tags and "
                "its recent history.", epilog="example:\n  ferrohsm keys show payments")
    p.add_argument("key", metavar="KEY", help="key id or name")
    p = command(ksub, "update", update, help="change a key's description",
                description="Change KEY's description (tags are immutable).",
                epilog='example:\n  ferrohsm keys update payments --description "card data"')
    p.add_argument("key", metavar="KEY", help="key id or name")
    p.add_argument("--description", required=True, help="the new description")
    approval_flag(p)
    _lifecycle(ksub)
    importkey.add_parser(ksub, ALGORITHMS, USAGES)
    p = command(ksub, "public-key", public_key, help="write an asymmetric key's public key (PEM)",
                description="Write the PEM public key of an asymmetric KEY (its primary version, "
                "or --version N) to --out FILE or stdout.",
                epilog="example:\n  ferrohsm keys public-key release-signing --out pub.pem\n"
                "  openssl dgst -sha256 -verify pub.pem -signature app.sig app.tar.gz\n"
                "  (an RSA key's default rsa-pss-sha256 signature: add -sigopt "
                "rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32)")
    p.add_argument("key", metavar="KEY", help="key id or name")
    p.add_argument("--version", type=int, metavar="N", help="key version (default: primary)")
    p.add_argument("--out", metavar="FILE", help="output file (default: stdout)")
    approval_flag(p)  # reading a public key is an approval action a tag policy may name


def _create(ksub: Any) -> None:
    p = command(ksub, "create", create, help="create a key",
                description="Create a key. Algorithms and their usages: aes-256-gcm → encrypt "
                "or wrap; rsa-2048, rsa-4096, ec-p256, ec-p384 → sign. Tags select policies "
                "(dual control, rotation, retention) and are immutable.",
                epilog="examples:\n"
                "  ferrohsm keys create --algorithm aes-256-gcm --usage encrypt --name payments "
                "--tag pci\n"
                "  ferrohsm keys create --algorithm ec-p256 --usage sign --name release-signing")
    p.add_argument("--algorithm", required=True, choices=ALGORITHMS, help="key algorithm")
    p.add_argument("--usage", required=True, choices=USAGES, help="what the key may do")
    p.add_argument("--name", help="unique name (usable wherever a key id is)")
    p.add_argument("--description", help="free text")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", dest="tags",
                   help="policy tag (repeatable)")


def _list(ksub: Any) -> None:
    p = command(ksub, "list", list_keys, help="list keys (filters, paging)",
                description="List keys, newest pages followed automatically. Filters combine.",
                epilog="examples:\n  ferrohsm keys list --tag pci --state active\n"
                "  ferrohsm keys list --json | jq -r '.keys[].name'")
    p.add_argument("--state", choices=STATES, help="only keys in this state")
    p.add_argument("--algorithm", choices=ALGORITHMS, help="only keys of this algorithm")
    p.add_argument("--usage", choices=USAGES, help="only keys of this usage")
    p.add_argument("--tag", help="only keys carrying this tag")
    p.add_argument("--name-prefix", metavar="P", help="only keys whose name starts with P")
    p.add_argument("--limit", type=_positive, metavar="N", help="show at most N keys")
    p.add_argument("--page-token", metavar="T", help="start from this page token")


LIFECYCLE = {
    "rotate": ("make a new version primary (the id never changes)",
               ("Rotate KEY: a new version becomes primary; data protected by older versions "
                "stays readable.")),
    "revoke": ("stop encrypt/sign/wrap; decrypt/verify/unwrap keep working",
               ("Revoke KEY: protect operations are refused from now on, process operations "
                "still work so no data is lost.")),
    "destroy": ("schedule destruction after the grace period",
                ("Schedule KEY for destruction: every operation is refused at once, and the "
                 "material is erased after the grace period (default 24 h) unless cancelled.")),
    "cancel-destroy": ("cancel a scheduled destruction",
                       "Cancel the scheduled destruction of KEY; it returns to its previous state."),
    "rollback": ("make an earlier enabled version primary again",
                 "Roll KEY back: version N (enabled) becomes the primary version again."),
    "destroy-version": ("erase one non-primary version's material now",
                        "Destroy version N of KEY at once (Administrator): its material is "
                        "erased, its metadata kept; data it protected can no longer be read."),
}


def _lifecycle(ksub: Any) -> None:
    for verb, (short, long) in LIFECYCLE.items():
        p = command(ksub, verb, lifecycle, help=short, description=long,
                    epilog=f"example:\n  ferrohsm keys {verb} payments"
                    + (" --version 1" if verb in ("rollback", "destroy-version") else ""))
        p.add_argument("key", metavar="KEY", help="key id or name")
        if verb in ("rollback", "destroy-version"):
            p.add_argument("--version", type=_positive, required=True, metavar="N",
                           help="the version to make primary" if verb == "rollback"
                           else "the version to destroy (never the primary)")
        if verb == "revoke":
            p.add_argument("--reason", help="why (recorded in the key's history and audit)")
        approval_flag(p)
        p.set_defaults(verb=verb)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


# ---- handlers: (args, client, settings) -> exit code ----------------------------------------


def _show_key(key: dict[str, Any], settings: Settings, summary: str | None = None,
              pending: list[dict[str, Any]] | None = None, hidden: bool = False) -> int:
    def human() -> str:
        text = output.key_detail(key, output.use_colour(sys.stdout))
        if pending:
            text += "\n\n" + output.pending_note(pending)
        elif pending is None and hidden:
            text += ("\n\nPending approvals: not visible to this role (listing approvals "
                     "needs an Auditor, Operator or Administrator token)")
        return f"{summary}\n\n{text}" if summary else text
    output.emit(settings, key, human)
    return 0


def _label(key: dict[str, Any]) -> str:
    return str(key.get("name") or key.get("id"))


def create(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    key = client.create_key(args.algorithm, args.usage, name=args.name,
                            description=args.description, tags=args.tags)
    return _show_key(key, settings, f"Created {_label(key)} ({key['id']}).")


def list_keys(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    filters = {"state": args.state, "algorithm": args.algorithm, "usage": args.usage,
               "tag": args.tag, "name_prefix": args.name_prefix}
    keys: list[dict[str, Any]] = []
    token = args.page_token
    first: dict[str, Any] | None = None
    while True:
        want = None if args.limit is None else min(1000, args.limit - len(keys))
        page = client.list_keys(**filters, limit=want, page_token=token)
        keys.extend(page.get("keys") or [])
        token = page.get("next_page_token")
        first = first if first is not None else page
        if not token or (args.limit is not None and len(keys) >= args.limit):
            break
    # The API's answer as it is (total and any other member), with every page's keys in it.
    document = {**(first or {}), **page, "keys": keys, "next_page_token": token}

    more = f"(more keys: --page-token {token})" if token else ""

    def human() -> str:
        empty = "no keys match" if any(filters.values()) or args.page_token \
            else _no_keys(settings.token)
        text = output.key_table(keys, output.use_colour(sys.stdout), empty)
        return f"{text}\n{more}" if more else text
    output.emit(settings, document, human, lambda: [output.key_values(k) for k in keys])
    if more and (settings.output == "text" or settings.field):
        print(more, file=sys.stderr)  # stdout holds values only; a script must know it is cut
    return 0


def _no_keys(token: str | None) -> str:
    """An empty, unfiltered listing: there are no keys yet, or (a tag-scoped token, read from
    its own claims) none this token may see, which is not the same and must not invite making
    one."""
    tags = unverified_claims(token).get("tags")
    if isinstance(tags, list):
        which = ", ".join(str(t)[:40] for t in tags[:10]) or "none"
        return (f"no keys visible: this token may see only keys carrying one of its tags "
                f"({which}); keys with other tags may exist")
    return ("no keys yet: create one with `ferrohsm keys create --algorithm aes-256-gcm "
            "--usage encrypt --name NAME`")


def show(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    key = client.get_key(args.key)
    if settings.output == "json" or settings.field:
        return _show_key(key, settings)
    pending = _open_approvals(client, str(key.get("id")))
    return _show_key(key, settings, pending=pending, hidden=pending is None)


def _open_approvals(client: Any, key_id: str) -> list[dict[str, Any]] | None:
    """Approvals still open (pending or approved, not yet used) on the key; None for a role
    that may not list approvals (Service: the API lets it list none, not even its own), said
    as such rather than as an error or a silence: the key itself was shown."""
    from ..client import Forbidden
    found: list[dict[str, Any]] = []
    try:
        for state in ("pending", "approved"):
            token = None
            while True:
                page = client.list_approvals(state, limit=1000, page_token=token)
                found.extend(a for a in page.get("approvals") or [] if a.get("key_id") == key_id)
                token = page.get("next_page_token")
                if not token:
                    break
    except Forbidden:
        return None
    return found


def update(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    key = client.update_key(args.key, args.description, approval_id=settings.approval_id)
    return _show_key(key, settings, f"Updated the description of {_label(key)}.")


def lifecycle(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    opts = {"approval_id": settings.approval_id}
    verb = args.verb
    if verb == "rotate":
        key = client.rotate_key(args.key, **opts)
        summary = f"Rotated {_label(key)}: v{key['primary_version']} is now primary."
    elif verb == "rollback":
        key = client.rollback_key(args.key, args.version, **opts)
        summary = f"Rolled {_label(key)} back: v{key['primary_version']} is primary again."
    elif verb == "revoke":
        key = client.revoke_key(args.key, args.reason, **opts)
        summary = f"Revoked {_label(key)}."
    elif verb == "destroy-version":
        key = client.destroy_version(args.key, args.version, **opts)
        summary = f"Destroyed version {args.version} of {_label(key)}: its material is erased."
    elif verb == "destroy":
        key = client.destroy_key(args.key, **opts)
        summary = (f"Scheduled {_label(key)} for destruction at "
                   f"{output.when(key.get('destroy_after'))}; undo with "
                   f"`ferrohsm keys cancel-destroy {_label(key)}`.")
    else:
        key = client.cancel_destroy(args.key, **opts)
        summary = f"Cancelled the destruction of {_label(key)}: it is {key['state']} again."
    return _show_key(key, settings, summary)


def public_key(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    with Output.open(args.out) as out:
        result = client.public_key(args.key, args.version, approval_id=settings.approval_id)
        if settings.field or settings.output != "table":
            data = (output.render(settings, result, lambda: "") + "\n").encode()
        else:
            data = str(result["pem"]).encode()
        out.commit(data)
    return 0
