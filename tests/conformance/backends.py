"""One implementation under test, for every conformance suite (key stores, approval stores)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

S = TypeVar("S")


@dataclass
class Backend(Generic[S]):
    """One store implementation; ``open()`` opens it (again) on the same underlying data."""

    kind: str
    persistent: bool
    opener: Callable[[], S]
    opened: list[S] = field(default_factory=list)

    def open(self) -> S:
        store = self.opener()
        self.opened.append(store)
        return store
