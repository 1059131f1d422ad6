"""When two token subjects name the same person to a reader of the audit log.

Subjects come from whoever issues tokens, and the server compares them where separation of
duties rests on it: a requester may not approve their own request, an approver counts once,
and no token may act as the server's own actors ("system", "anonymous"). A human reading the
log cannot tell ``op1`` from ``OP1``, ``system`` from ``System `` or from "system" spelled
with Cyrillic letters that look Latin, so those comparisons use ``reader_form``:
compatibility-normalized, case folded, without spaces, punctuation or blanks, and with the Cyrillic, Greek and Armenian
letters that pass for Latin ones in common fonts read as those. It is a reading aid for these
checks only; subjects are stored and shown as issued.
"""

from __future__ import annotations

import re
import unicodedata

_NOT_WORD_RE = re.compile(r"[\W_]+")
# Letters (after case folding) that look like a Latin letter in common fonts. Not Unicode's
# whole confusables table: the scripts a subject is realistically disguised with
# (written as escapes: the look-alikes would pass for Latin letters here too)
_LOOK_ALIKES = str.maketrans({
    # Cyrillic
    "\u0430": "a", "\u0432": "b", "\u0435": "e", "\u0451": "e", "\u04bb": "h", "\u043d": "h",
    "\u0456": "i", "\u0457": "i", "\u0458": "j", "\u043a": "k", "\u04cf": "l", "\u043c": "m",
    "\u043f": "n", "\u043e": "o", "\u0440": "p", "\u051b": "q", "\u0455": "s", "\u0442": "t",
    "\u0441": "c", "\u0443": "y", "\u051d": "w", "\u0445": "x", "\u044c": "b", "\u0501": "d",
    # Greek
    "\u03b1": "a", "\u03b2": "b", "\u03b5": "e", "\u03b7": "n", "\u03b9": "i", "\u03ba": "k",
    "\u03bc": "u", "\u03bd": "v", "\u03bf": "o", "\u03c1": "p", "\u03c4": "t", "\u03c5": "u",
    "\u03c7": "x", "\u03f2": "c", "\u03c9": "w",
    # Armenian; Latin letters that read as others
    "\u0585": "o", "\u0578": "n", "\u057d": "u", "\u0570": "h", "\u0581": "g", "\u0131": "i",
    "\u0251": "a", "\u0261": "g",
})


def reader_form(subject: str) -> str:
    """``subject`` as a reader of the audit log would take it (module docstring)."""
    folded = unicodedata.normalize("NFKC", subject).casefold()
    return _NOT_WORD_RE.sub("", folded).translate(_LOOK_ALIKES)


def same_person(one: str, other: str) -> bool:
    """Whether two subjects would read as the same name (so as the same person)."""
    return one == other or reader_form(one) == reader_form(other)
