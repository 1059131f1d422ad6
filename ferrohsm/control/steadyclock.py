"""The scheduler's time: the wall clock, never ahead of the time that has really passed.

Why: what the scheduler does cannot be undone (destroying keys and versions, deleting audit
records past their retention, pruning finished approvals). A wall clock stepped forward by
mistake (a restored VM, a wrong NTP answer, an operator's typo) would run all of it at once, and
stepping it back undoes nothing: five seconds at +400 days deleted a whole audit log. So the
scheduler reads this clock. A step forward is taken only once it has held for ``adopt_after``
seconds of elapsed time (a real correction holds; a mistake is undone within minutes) or at the
next start; until then the scheduler's time runs on from before the step, and work waits. A step
back is taken at once: work waits for the clock to catch up, and nothing runs twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

log = logging.getLogger("ferrohsm.scheduler")
ADOPT_AFTER = 3600.0  # seconds a forward step must hold before the scheduler acts on it
SLACK = 2.0  # seconds the wall clock may run ahead of elapsed time (drift, NTP slewing)


def _elapsed() -> float:
    """Seconds on a clock no one can set: CLOCK_BOOTTIME (counts suspension) where there is
    one, else the monotonic clock."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


class SteadyClock:
    """``wall()``, or the time elapsed since the last trusted reading when ``wall`` jumped
    ahead of it (see the module docstring)."""

    def __init__(self, wall: Callable[[], datetime], elapsed: Callable[[], float] = _elapsed,
                 adopt_after: float = ADOPT_AFTER) -> None:
        self._wall, self._elapsed, self._adopt_after = wall, elapsed, adopt_after
        self._anchor = (wall(), elapsed())  # the last reading taken as true
        self._ahead_since: float | None = None  # when the wall clock was first seen ahead

    def __call__(self) -> datetime:
        wall, elapsed = self._wall(), self._elapsed()
        trusted, at = self._anchor
        steady = trusted + timedelta(seconds=elapsed - at)
        if wall <= steady + timedelta(seconds=SLACK):
            if self._ahead_since is not None:
                log.warning("scheduler: the wall clock is back in step; scheduled work resumes")
            self._anchor, self._ahead_since = (wall, elapsed), None
            return wall
        if self._ahead_since is None:
            self._ahead_since = elapsed
            log.warning("scheduler: the wall clock jumped %.0f s ahead of the time that has "
                        "passed; scheduled destruction, rotation and retention keep the earlier "
                        "time until the jump has held for %.0f s (or until a restart)",
                        (wall - steady).total_seconds(), self._adopt_after)
        if elapsed - self._ahead_since >= self._adopt_after:
            log.warning("scheduler: the wall clock's jump has held for %.0f s: taking its time",
                        self._adopt_after)
            self._anchor, self._ahead_since = (wall, elapsed), None
            return wall
        return steady
