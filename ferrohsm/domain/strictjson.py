"""JSON objects without duplicate members.

Python's json keeps the LAST of two equal member names; another parser may keep the first. For
anything security-relevant (token headers and claims, keysets) two readers must never disagree,
so a duplicate is an error. Use as ``json.loads(text, object_pairs_hook=no_duplicates)``.
"""

from __future__ import annotations

from typing import Any


def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError("duplicate member")
        out[name] = value
    return out
