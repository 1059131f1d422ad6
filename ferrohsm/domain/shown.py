"""A value a caller sent, quoted for a message: cut short with its closing quote kept."""

from __future__ import annotations


def shown(value: object, limit: int = 40) -> str:
    """``repr(value)`` at most ``limit`` characters: a longer one is cut with an ellipsis
    before its last character, so a quoted string still reads as one (``'aaa…'``), and a
    reader sees that it was cut (a bare slice dropped the quote and looked like the value)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:max(1, limit - 2)]}…{text[-1]}"
