"""Every `ferrohsm` subcommand has complete --help with an example, and README's "Command line"
table is the one the parser generates (``python3 -m ferrohsm.cli.docgen`` rewrites it)."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path

import pytest

from ferrohsm.cli import docgen, tree
from ferrohsm.cli.main import build_parser, main

README = Path(__file__).resolve().parent.parent / "README.md"
OFFLINE = {("audit", "verify"), ("audit", "report"), ("audit", "verify-votes")}  # own parsers in ferrohsm.audit


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def leaf_commands() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(path, parser) of every runnable command, e.g. (("keys", "rotate"), parser)."""
    found = []
    stack: list[tuple[tuple[str, ...], argparse.ArgumentParser]] = [((), build_parser())]
    while stack:
        path, parser = stack.pop()
        children = _subparsers(parser)
        if not children and path:
            found.append((path, parser))
        stack.extend(((*path, name), child) for name, child in children.items())
    return sorted(found, key=lambda item: item[0])


COMMANDS = leaf_commands()
IDS = [" ".join(path) for path, _ in COMMANDS]


def readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Command line\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Command line' section"
    return match.group(1)


def test_the_readme_table_is_generated_from_the_parser() -> None:
    text = README.read_text(encoding="utf-8")
    assert docgen.BEGIN in readme_section() and docgen.END in readme_section()
    assert docgen.replace_block(text, docgen.block(build_parser())) == text, \
        "README.md's command table drifted from the parser: run `python3 -m ferrohsm.cli.docgen`"
    assert docgen.main(["--check"]) == 0


def test_every_command_has_an_example_and_no_abbreviations() -> None:
    """Walks the real tree (the offline tools' own parsers included): a command without an
    example in its --help, or a parser that accepts a prefix of a flag, fails here."""
    commands = list(tree.walk(build_parser()))
    assert {("audit", "verify"), ("audit", "report"), ("serve",), ("quickstart",),
            ("token", "issue")} <= {c.path for c in commands}
    for command in commands:
        assert command.parser.allow_abbrev is False, command.name
        if command.path:  # every command and command group, not only the runnable ones
            assert "example" in (command.parser.epilog or ""), f"{command.name}: no example"
            assert command.name in (command.parser.epilog or "") or \
                command.path[-1] in (command.parser.epilog or ""), command.name


def test_the_tree_has_every_api_md_command() -> None:
    expected = {"serve", "quickstart", "token issue", "encrypt", "decrypt", "sign", "verify",
                "wrap", "unwrap", "approvals list", "approvals approve", "approvals deny",
                "audit export", "audit verify", "audit report", "version", "status", "whoami",
        "token revoke", "completion", "man"} | {
        f"keys {v}" for v in ("create", "list", "show", "rotate", "revoke", "destroy",
                              "cancel-destroy", "rollback", "public-key")}
    assert expected <= set(IDS)


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=IDS)
def test_documented_in_readme(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    assert f"`ferrohsm {' '.join(path)}" in readme_section() or \
        f"ferrohsm {' '.join(path)} " in readme_section(), f"README lacks ferrohsm {' '.join(path)}"


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=IDS)
def test_help_is_complete(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([*path, "--help"])
        except SystemExit as exc:
            code = int(exc.code or 0)
    assert code == 0, err.getvalue()
    text = out.getvalue()
    assert text.startswith(f"usage: ferrohsm {' '.join(path)}"), text[:80]
    if path in OFFLINE:
        return
    assert parser.description and len(parser.description) > 20, "no description"
    for action in parser._actions:
        assert action.help, f"{action.option_strings or action.dest} has no help text"
    if "client_func" in parser._defaults:
        assert "example" in (parser.epilog or ""), "client commands show an example"
        assert "--server" in text and "--json" in text
