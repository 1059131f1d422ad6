"""The command tree as data: every command's path and parser, for --help checks, shell
completion, the manual page and the README's command table, all generated from the one argparse
tree so none of them can drift from what the parser accepts.

``audit verify`` and ``audit report`` own their parsers (ferrohsm.audit: the offline tools stay
stdlib-only and run without the CLI); their placeholders in the tree are swapped for the real
parsers here.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]               # ("keys", "rotate")
    parser: argparse.ArgumentParser
    help: str                           # the one-line summary shown in the parent's list
    children: tuple[str, ...]           # subcommand names ((): a runnable leaf)

    @property
    def name(self) -> str:
        return " ".join(("ferrohsm", *self.path))


def subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:  # type: ignore[type-arg]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def chosen(root: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the deepest command named in ``argv`` (``keys rotate`` in ``keys rotate
    KEY --x``): argparse reports a subcommand's unknown option from the root, with the root's
    usage, where the command's own usage is what helps."""
    parser = root
    for word in chosen_path(root, argv):
        action = subparsers(parser)
        if action is None:  # cannot be: chosen_path walked through it
            break
        parser = action.choices[word]
    return parser


def chosen_path(root: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """The leading words of ``argv`` that name commands (``["keys", "rotate"]``)."""
    parser, path = root, []
    for word in argv:
        action = subparsers(parser)
        if action is None or word.startswith("-") or word not in action.choices:
            break
        parser = action.choices[word]
        path.append(word)
    return path


def offline_parser(path: tuple[str, ...]) -> argparse.ArgumentParser | None:
    """The real parser of an offline tool whose tree entry is a placeholder."""
    if path == ("audit", "verify"):
        from ..audit.verify import verify_parser
        return verify_parser()
    if path == ("audit", "report"):
        from ..audit.report import report_parser
        return report_parser()
    if path == ("audit", "verify-votes"):
        from ..audit.votecheck import votes_parser
        return votes_parser()
    return None


def walk(root: argparse.ArgumentParser) -> Iterator[Command]:
    """Every command below ``root`` (groups and leaves), depth first in declaration order."""
    def visit(path: tuple[str, ...], parser: argparse.ArgumentParser,
              summary: str) -> Iterator[Command]:
        sub = subparsers(parser)
        names = tuple(sub.choices) if sub else ()
        yield Command(path, offline_parser(path) or parser, summary, names)
        if sub is None:
            return
        helps = {a.dest: a.help or "" for a in sub._choices_actions}
        for name, child in sub.choices.items():
            yield from visit((*path, name), child, helps.get(name, ""))
    yield from visit((), root, root.description or "")


def leaves(root: argparse.ArgumentParser) -> list[Command]:
    return [c for c in walk(root) if c.path and not c.children]


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The optional arguments a user may type (help included), in declaration order."""
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]


def positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not a.option_strings
            and not isinstance(a, argparse._SubParsersAction)]


def takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def no_abbreviations(root: argparse.ArgumentParser) -> None:
    """``--alg`` must not mean ``--algorithm``: a flag added later would change what an old
    script means, or break it as ambiguous. Applied to every parser in the tree, including
    those another module adds."""
    for command in walk(root):
        command.parser.allow_abbrev = False
    root.allow_abbrev = False
    for command in walk(root):
        sub = subparsers(command.parser)
        for child in (sub.choices.values() if sub else ()):
            child.allow_abbrev = False


GIVEN = "_given_once"  # the namespace member where _StoreOnce keeps what was given


class _StoreOnce(argparse._StoreAction):
    """A flag that takes one value, refusing a second, different one: `sign --in a.tgz --in
    b.tgz` signed b.tgz, and `keys create --algorithm aes-256-gcm --algorithm ec-p256` made an
    EC key, without a word (an outside tester). The same value twice is harmless and taken.
    The values are not echoed: a flag may hold a token."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        given: dict[str, Any] = namespace.__dict__.setdefault(GIVEN, {})
        if self.dest in given and given[self.dest] != values:
            parser.error(f"{option_string} given twice with different values: give it once")
        given[self.dest] = values
        setattr(namespace, self.dest, values)


def once_only(root: argparse.ArgumentParser) -> None:
    """Every flag of the tree that stores one value takes it once (_StoreOnce)."""
    for command in walk(root):
        for action in command.parser._actions:
            if type(action) is argparse._StoreAction and action.option_strings:
                action.__class__ = _StoreOnce


def forget_given(args: argparse.Namespace) -> None:
    """Drop _StoreOnce's bookkeeping from parsed arguments (subparsers copy it up)."""
    args.__dict__.pop(GIVEN, None)


# The client settings every client command takes: listed once (manual page, README), not per
# command.
CLIENT_DESTS = frozenset({"server", "token", "token_file", "ca_cert", "client_cert",
                          "client_key", "profile", "timeout", "output", "field",
                          "correlation_id"})


def _metavar(action: argparse.Action) -> str:
    if action.metavar:
        return str(action.metavar)
    if action.choices:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest.upper()


def synopsis(command: Command) -> str:
    """``ferrohsm keys create --algorithm A --usage U [--name NAME] [--tag TAG]…``: the
    command's own flags (the client settings are listed once, apart)."""
    parts = [command.name]
    for action in positionals(command.parser):
        many = action.nargs in ("+", "*")
        text = _metavar(action) + ("…" if many else "")
        parts.append(f"[{text}]" if action.nargs in ("?", "*") else text)
    for action in options(command.parser):
        if action.dest == "help" or action.dest in CLIENT_DESTS:
            continue
        flag = action.option_strings[0] if action.option_strings[0].startswith("--") \
            else action.option_strings[-1]
        text = f"{flag} {_metavar(action)}" if takes_value(action) else flag
        if not action.required:
            text = f"[{text}]" + ("…" if isinstance(action, argparse._AppendAction) else "")
        parts.append(text)
    return " ".join(parts)
