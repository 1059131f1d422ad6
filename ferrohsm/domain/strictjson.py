"""JSON objects without duplicate members; strings that are Unicode scalar values.

Python's json keeps the LAST of two equal member names; another parser may keep the first. For
anything security-relevant (token headers and claims, keysets) two readers must never disagree,
so a duplicate is an error. Use as ``json.loads(text, object_pairs_hook=no_duplicates)``.

``loads`` is ``json.loads`` for text read back from storage (audit lines, checkpoints): nesting
too deep for the parser (``[`` a hundred thousand times) is a ValueError like any other text that
is not JSON, never a RecursionError that escapes every handler as an unexpected error.
"""

from __future__ import annotations

import json
import re
from typing import Any


def loads(text: str | bytes, **options: Any) -> Any:
    """``json.loads(text, **options)``; ValueError also for nesting too deep to parse."""
    try:
        return json.loads(text, **options)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError("duplicate member")
        out[name] = value
    return out


_SURROGATE = re.compile("[\ud800-\udfff]")
# Where json.loads can make a surrogate: only a \uD800-\uDFFF escape (strictly decoded UTF-8 text
# holds none). A cheap test on the text before walking the value.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def may_hold_surrogates(text: str) -> bool:
    """False when ``json.loads(text)`` cannot hold a surrogate (text itself has none)."""
    return _SURROGATE_ESCAPE.search(text) is not None or _SURROGATE.search(text) is not None


def has_surrogate(value: Any) -> bool:
    """Whether a decoded JSON value holds a string (a value or a member name, at any depth)
    that is not a sequence of Unicode scalar values: a lone surrogate, which no UTF-8 writer
    can encode. An escaped pair (``\\ud83d\\ude00``) decodes to one scalar value and passes."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
