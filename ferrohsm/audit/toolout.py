"""``--output table|json|text``, ``--json`` and ``--field NAME`` for the offline audit tools.

``audit verify`` and ``audit report`` own their parsers and must run with the standard library
alone (no CLI package), yet a script that passes ``--output json`` or ``--field`` to every
``ferrohsm`` command must get the same meaning here: the same three formats, ``name<TAB>value``
lines for text, and a dotted ``--field`` path whose string value prints raw.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

OUTPUTS = ("table", "json", "text")


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """The output flags every client command has, with the same names and meanings."""
    parser.add_argument("--output", choices=OUTPUTS, default=None,
                        help="table (default, for people), json or text (name<TAB>value lines)")
    parser.add_argument("--json", action="store_true",
                        help="machine-readable output (same as --output json)")
    parser.add_argument("--field", metavar="NAME",
                        help="print only this member of the JSON answer (dotted for nested: "
                        "a.b; a string raw, anything else as JSON)")


class OutputChoiceError(ValueError):
    """Contradictory or empty output flags: a usage error (exit 2)."""


def output_format(args: argparse.Namespace) -> str:
    """The one format asked for; two different ones, or --field with a format, are refused."""
    chosen = args.output or ("json" if args.json else "table")
    if args.json and args.output not in (None, "json"):
        raise OutputChoiceError(f"--json and --output {args.output} ask for two output "
                                "formats: give one")
    if args.field is not None:
        if not args.field.strip():
            raise OutputChoiceError("--field needs a member name (e.g. --field records)")
        if args.output in ("table", "text"):
            raise OutputChoiceError(f"--field prints one value of the JSON answer, not "
                                    f"--output {args.output}: give one of them")
    return chosen


def render(args: argparse.Namespace, document: Any, human: Callable[[], str]) -> str:
    """What the tool prints for ``document`` under the output flags (checked first)."""
    chosen = output_format(args)
    if args.field is not None:
        return _field(document, args.field)
    if chosen == "json":
        return json.dumps(document, indent=2, sort_keys=True)
    if chosen == "text":
        return "\n".join(f"{name}\t{cell(value)}" for name, value in flat(document))
    return human()


def _field(document: Any, path: str) -> str:
    try:
        value = lookup(document, path)
    except MissingMember:
        names = ", ".join(name for name, _ in flat(document) if name)
        raise OutputChoiceError(f"--field {path}: the answer has no such member; it has: "
                                f"{names[:600]}") from None
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# The pieces the CLI's own --output/--field use too (cli/output.py): one meaning for both.

class MissingMember(LookupError):
    """A ``--field`` path the document does not hold."""


def lookup(document: Any, path: str) -> Any:
    """The member at a dotted path (list items by index), or MissingMember."""
    value = document
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise MissingMember(path)
    return value


def cell(value: Any) -> str:
    """A value on one line: strings as they are (tabs and newlines escaped), the rest JSON."""
    if isinstance(value, str):
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    return "" if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``versions.0.state``-style names for every scalar member (the names --field takes)."""
    if isinstance(value, dict) and value:
        return [pair for k in sorted(value) for pair in flat(value[k], f"{prefix}{k}.")]
    if isinstance(value, list) and value:
        return [pair for i, v in enumerate(value) for pair in flat(v, f"{prefix}{i}.")]
    return [(prefix.rstrip("."), value)]
