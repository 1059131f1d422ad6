"""Debug tracebacks without bearer tokens.

FERROHSM_DEBUG=1 prints the traceback of an unexpected error, and a traceback quotes exception
messages, which can quote a request header (``Invalid header value b'Bearer eyJ…\\n'``). Every
token is cut out of the text before it is printed: the token this process was given (environment,
--token, token file), anything after ``Bearer``, and anything shaped like a JWT.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Iterable

from ..smallfile import MIB, read_at_most

REDACTED = "[REDACTED]"
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_BEARER_RE = re.compile(r"(?i)(bearer)(\s|\\[nrt]|%20)+[^\s'\"\\,)]+")
MIN_SECRET = 8  # shorter values would blank out ordinary words


def known_tokens(argv: Iterable[str] | None = None) -> set[str]:
    """The token values this process could be holding, as given."""
    found: set[str] = set()
    raw = os.environ.get("FERROHSM_TOKEN")
    if raw:
        found.update({raw, raw.strip()})
    path = os.environ.get("FERROHSM_TOKEN_FILE")
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        if arg == "--token" and i + 1 < len(args):
            found.add(args[i + 1])
        elif arg.startswith("--token="):
            found.add(arg.partition("=")[2])
        elif arg == "--token-file" and i + 1 < len(args):
            path = args[i + 1]
    if path:
        try:
            text = read_at_most(path, MIB).decode("utf-8")
            found.update({text, text.strip()})
        except (OSError, UnicodeDecodeError):
            pass
    return {t for t in found if len(t) >= MIN_SECRET}


def scrub(text: str, tokens: Iterable[str] = ()) -> str:
    for token in sorted(tokens, key=len, reverse=True):
        text = text.replace(token, REDACTED).replace(repr(token)[1:-1], REDACTED)
    text = _BEARER_RE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _JWT_RE.sub(REDACTED, text)


def print_scrubbed_traceback(exc: BaseException) -> None:
    text = "".join(traceback.format_exception(exc))
    sys.stderr.write(scrub(text, known_tokens()))
