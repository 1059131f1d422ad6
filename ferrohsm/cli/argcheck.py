"""Checks on the command line that argparse does not make, done once for every command.

* Client flags before the command (``ferrohsm --json keys list``) are moved after the command's
  name, where its parser reads them: the same flags are accepted before and after.
* An unknown flag is named first, with a reminder that flags are never abbreviated: argparse
  would otherwise report a required flag as missing (``--alg`` for ``--algorithm``), not the
  flag it did not know.
* Every value is text the server can be sent: an argument that is not valid UTF-8 (the shell
  passed bytes; Python keeps them as lone surrogates) is named before anything is sent, and a
  value sent as an HTTP header (--correlation-id, --approval-id) holds no control character.
  File and directory names are exempt: on Linux any bytes make a valid path.
* A positional id (KEY, ID, JTI) is not empty: ``keys show ''`` (an unset shell variable)
  would otherwise be sent as a request for the collection's path.
"""

from __future__ import annotations

import argparse
import difflib

from ..domain.model import is_uuid
from . import tree
from .errors import USAGE, CliExit
from .settings import client_flags

# Values that name a file or directory: passed to the OS as the bytes they are.
PATH_METAVARS = frozenset({"FILE", "DIR", "PATH", "PEM"})
# Values sent as HTTP header fields: printable ASCII (and spaces) only.
HEADER_DESTS = {"correlation_id": "X-Correlation-ID", "approval_id": "X-Approval-ID"}
NO_HOIST = frozenset({"-h", "--help", "--version"})


def _client_options() -> dict[str, argparse.Action]:
    return {flag: action for action in client_flags()._actions
            for flag in action.option_strings}


def hoist_leading_flags(root: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--json keys list`` as ``keys list --json``: client flags given before the command are
    put right after its name (before its positionals: argparse reads options anywhere there)."""
    known = _client_options()
    leading: list[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in NO_HOIST:
        name = argv[i].split("=", 1)[0]
        action = known.get(name)
        if action is None:
            break
        takes = action.nargs != 0 and "=" not in argv[i]
        leading.extend(argv[i:i + 1 + int(takes)])
        i += 1 + int(takes)
    if not leading:
        return argv
    rest = argv[i:]
    depth = len(tree.chosen_path(root, rest))
    return [*rest[:depth], *leading, *rest[depth:]]


def unknown_flags_first(root: argparse.ArgumentParser, argv: list[str]) -> None:
    """Refuse (exit 2, with the command's usage) the first ``--flag`` its command does not
    know, before argparse reports something else about the same command line."""
    parser = tree.chosen(root, argv)
    if tree.subparsers(parser) is not None and parser is not root:
        return  # a group (`keys`): argparse names the missing or unknown subcommand itself
    known = {flag for action in parser._actions for flag in action.option_strings}
    for word in argv:
        if word == "--":
            return
        name = word.split("=", 1)[0]
        if word.startswith("--") and len(word) > 2 and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
            starts = [k for k in sorted(known) if k.startswith(name)]
            guess = starts[0] if len(starts) == 1 else (close[0] if close else None)
            hint = f" (did you mean {guess}?)" if guess else ""
            if starts:
                hint += "; flags are never abbreviated: spell them out"
            parser.error(f"unrecognized argument: {name}{hint}")


def _label(action: argparse.Action) -> str:
    if action.option_strings:
        return max(action.option_strings, key=len)
    return f"argument {action.metavar or action.dest.upper()}"


def _values(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    return []


def check_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every argument the command got is text that can be sent (module docstring), or one line
    naming it and exit 2 before anything is sent."""
    for action in parser._actions:
        if action.metavar in PATH_METAVARS or not hasattr(args, action.dest):
            continue
        for value in _values(getattr(args, action.dest)):
            _check_one(_label(action), action.dest, value)
            if not action.option_strings and not value.strip():
                raise CliExit(f"{_label(action)}: the value is empty (an unset shell "
                              "variable?); nothing was sent", USAGE)


def _check_one(label: str, dest: str, value: str) -> None:
    bad = next((c for c in value if "\ud800" <= c <= "\udfff"), None)
    if bad is not None:
        byte = f" (byte 0x{ord(bad) - 0xDC00:02x})" if "\udc80" <= bad <= "\udcff" else ""
        raise CliExit(f"{label}: the value is not valid UTF-8 text{byte}: check the shell "
                      "quoting or the terminal's encoding; nothing was sent", USAGE)
    header = HEADER_DESTS.get(dest)
    if header is not None:
        odd = next((c for c in value if not " " <= c <= "~"), None)
        if odd is not None:
            raise CliExit(f"{label}: the value contains the character U+{ord(odd):04X}; it "
                          f"is sent as the {header} header, which takes printable ASCII only",
                          USAGE)
    if dest == "approval_id" and not is_uuid(value):  # the server's 400, said before sending
        raise CliExit(f"{label}: the value must be an approval id as the parked answer printed "
                      "it (a lowercase UUID); nothing was sent", USAGE)
