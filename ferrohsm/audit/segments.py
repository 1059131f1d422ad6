"""Names of the file sink's segments; shared by the sink and the stdlib-only offline verifier."""

from __future__ import annotations

import os
import re

SEGMENT_RE = re.compile(r"^audit-(\d{6,})\.jsonl$")


def segment_name(number: int) -> str:
    return f"audit-{number:06d}.jsonl"


def list_segments(directory: str) -> list[int]:
    """Segment numbers present in ``directory``, ascending (numerically, not by name)."""
    found = (SEGMENT_RE.match(name) for name in os.listdir(directory))
    return sorted(int(m.group(1)) for m in found if m)
