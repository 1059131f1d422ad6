"""The text form of one unseal share, as printed once by ``ferrohsm init`` and ``rekey``::

    fhsm1-<split id: 8 hex>-<x: 1..255>-<y: base64url, no padding>

The split id names the split the share belongs to (a new one at every ``init`` and ``rekey``),
so a share of another split is refused at once, by name, instead of spoiling a reconstruction.
Parsing errors never quote the text: it is a secret.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from ..domain.errors import BadRequest

__all__ = ["Share", "parse_share"]

_SHARE_RE = re.compile(r"fhsm1-([0-9a-f]{8})-([0-9]{1,3})-([A-Za-z0-9_-]{4,200})")
SPLIT_ID_RE = re.compile(r"[0-9a-f]{8}")


@dataclass(frozen=True)
class Share:
    split_id: str
    x: int
    y: bytes = b""

    def __repr__(self) -> str:  # never the value
        return f"Share(split_id={self.split_id!r}, x={self.x})"

    def text(self) -> str:
        y = base64.urlsafe_b64encode(self.y).decode("ascii").rstrip("=")
        return f"fhsm1-{self.split_id}-{self.x}-{y}"


def parse_share(text: object) -> Share:
    """A Share, or BadRequest saying what is wrong (never quoting the text)."""
    if not isinstance(text, str):
        raise BadRequest("a share must be a string")
    match = _SHARE_RE.fullmatch(text.strip())
    if match is None:
        raise BadRequest("not an unseal share (expected fhsm1-<split>-<n>-<value>, as printed "
                         "by `ferrohsm init` or `ferrohsm rekey`)")
    x = int(match.group(2))
    if not 1 <= x <= 255:
        raise BadRequest("not an unseal share (its number is outside 1..255)")
    value = match.group(3)
    try:
        y = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise BadRequest("not an unseal share (its value is not base64url)") from None
    return Share(match.group(1), x, y)
