"""Collecting unseal shares until a threshold reconstructs the master key.

Shares are kept per split (the current one and, during a rekey, the pending one), by number.
When a split has its threshold, the shares are combined and the result must open that split's
check value and the custody file's MAC: otherwise the set was wrong (a mistyped or foreign
share), every share of that split is dropped and ``WrongShares`` says so. Nothing here logs; the
caller (custody/gate.py) audits each submission, never its value.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..crypto import shamir
from ..domain.errors import BadRequest, ConfigError, Conflict, FerroError
from .shares import Share
from .state import CustodyFile, Split

__all__ = ["Progress", "Sealed", "Unsealer", "WrongShares"]


class Sealed(FerroError):
    """The service is sealed: only health and unseal answer."""

    code, status, outcome = "sealed", 503, "denied"


class WrongShares(FerroError):
    """The submitted set did not reconstruct the master key; progress was reset."""

    code, status, outcome = "wrong_shares", 400, "denied"


@dataclass(frozen=True)
class Progress:
    submitted: int
    threshold: int
    shares: int
    split_id: str

    def as_json(self) -> dict[str, object]:
        return {"progress": self.submitted, "threshold": self.threshold, "shares": self.shares}


class Unsealer:
    """Thread-safe: the server may run two submissions at once."""

    def __init__(self, custody: CustodyFile,
                 reload: Callable[[], CustodyFile] | None = None) -> None:
        self._custody = custody
        self._reload = reload  # the custody file as it is now (custody/state.py load)
        self._lock = threading.Lock()
        self._collected: dict[str, dict[int, bytes]] = {}
        # A set reconstructed the key: the service is opening with it, and a share arriving
        # meanwhile is refused, not kept (it would stay in memory, counted as progress, on an
        # unsealed service). ``reset`` (sealing again, or an opening that failed) ends it.
        self._complete = False

    def progress(self) -> Progress:
        """Of the split with the most shares submitted (the current split when none)."""
        with self._lock:
            split_id = max(self._collected, key=lambda s: len(self._collected[s]),
                           default=self._custody.current.split_id)
            split = self._custody.split(split_id) or self._custody.current
            return Progress(len(self._collected.get(split_id, {})), split.threshold,
                            split.shares, split.split_id)

    def reset(self) -> None:
        with self._lock:
            self._wipe()
            self._complete = False

    def _wipe(self) -> None:
        for collected in self._collected.values():
            collected.clear()
        self._collected.clear()

    def _split_of(self, split_id: str) -> Split | None:
        """The split ``split_id`` names, in the custody file as loaded, else as it is now: an
        offline rekey run beside this sealed server (no lock held while sealed) promoted new
        shares, which were refused until a restart (an outside tester). Progress made on the
        old file is dropped with it."""
        split = self._custody.split(split_id)
        if split is not None or self._reload is None:
            return split
        try:
            fresh = self._reload()
        except ConfigError:
            return None
        if fresh.split(split_id) is None:
            return None
        with self._lock:
            self._custody = fresh
            self._wipe()
        return fresh.split(split_id)

    def submit(self, share: Share) -> tuple[Progress, bytes | None]:
        """Progress after ``share``, and the master key once the threshold is reached."""
        split = self._split_of(share.split_id)
        if split is None:
            # this service's split id is not named: anyone may submit, and with it a forged
            # share of the right split resets the custodians' progress (red team)
            raise BadRequest(f"this share belongs to split {share.split_id}, not to one of "
                             "this service's (another service's shares, or from before a rekey)")
        with self._lock:
            if self._complete:
                raise Conflict("the threshold was reached: the service is unsealing with the "
                               "shares already submitted")
            collected = self._collected.setdefault(split.split_id, {})
            if share.x in collected:
                raise BadRequest(f"share {share.x} of split {split.split_id} was already "
                                 "submitted")
            if share.x > split.shares or len(share.y) != 32:
                raise BadRequest(f"this is not a share of split {split.split_id}")
            if split.holds(share) is False:  # refused alone: it cannot spoil the set
                raise BadRequest(f"this is not share {share.x} of split {split.split_id} "
                                 "(mistyped?): not counted")
            collected[share.x] = share.y
            if len(collected) < split.threshold:
                return Progress(len(collected), split.threshold, split.shares,
                                split.split_id), None
            master = shamir.combine(sorted(collected.items()))
            self._wipe()
            opened = split.opens_with(master) and self._custody.mac_ok(split.split_id, master)
            self._complete = opened
        if not opened:
            raise WrongShares(f"the {split.threshold} shares submitted do not reconstruct the "
                              "master key (one is mistyped or from another service); progress "
                              "was reset: submit the shares again")
        return Progress(split.threshold, split.threshold, split.shares, split.split_id), master
