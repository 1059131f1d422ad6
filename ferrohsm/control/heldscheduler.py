"""The retention scheduler with each tick inside a gate (the online rekey's pause,
custody/online.py): a scheduled rotation seals new material with the engine's sealer and writes
a record under the store's record MAC, so it must not run while a rekey swaps both. A tick that
waits too long for a rekey fails like any other (logged, retried at the next interval)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from .scheduler import RetentionScheduler, TickReport


class HeldScheduler(RetentionScheduler):
    def __init__(self, *args: Any, hold: Callable[[], AbstractContextManager[None]],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hold = hold

    def tick(self, now: datetime | None = None) -> TickReport:
        with self._hold():
            return super().tick(now)
