"""One implementation under test, for every conformance suite (key stores, approval stores)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


class Closable(Protocol):
    def close(self) -> None: ...


S = TypeVar("S", bound=Closable)


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


def serve_backend(kind: str, persistent: bool, opener: Callable[[], S]) -> Iterator[Backend[S]]:
    """The body of each suite's ``backend`` fixture: yield it, then close all it opened."""
    found = Backend(kind, persistent, opener)
    yield found
    for store in found.opened:
        store.close()
