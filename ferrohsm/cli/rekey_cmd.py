"""`ferrohsm rekey` (placeholder, filled in below)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def add_parser(sub: Any, custody_flags: Callable[[Any], None]) -> None:
    return None
