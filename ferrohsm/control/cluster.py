"""How the processes sharing one store coordinate (README "Running several nodes"): who starts
cold (membership), who runs the retention scheduler (leader), and the per-actor rate-limit
spending they exchange. The ports are protocols; store/nodelock.py and store/pg_shared.py
implement them, and app.py picks one pair by store kind."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..auth.sharedlimit import ClusterLimits, UsageExchange


class Leader(Protocol):
    def is_leader(self) -> bool: ...
    def holds(self) -> bool: ...
    def close(self) -> None: ...


class Membership(Protocol):
    def enter(self) -> bool: ...
    def started(self) -> None: ...
    def keep(self) -> bool: ...
    def close(self) -> None: ...


class NodeLeases(Protocol):
    """Per-node locks that tell a dead node from a slow one (store/nodelock.py)."""

    node: str

    def dead(self) -> list[str]: ...
    def bury(self, node: str) -> None: ...
    def sole(self) -> AbstractContextManager[int | None]: ...
    def close(self) -> None: ...


@dataclass
class Cluster:
    """How the processes sharing one store coordinate (README "Running several nodes"): who
    starts cold, who runs the scheduler, and the per-actor rate-limit spending."""

    membership: Membership
    leader: Leader
    usage: UsageExchange
    limits: ClusterLimits | None = None
    leases: NodeLeases | None = None  # None: a dead node's intents wait for a cold start
    settle: Callable[[], int] | None = None  # settles dead nodes' intents (the leader's tick)
    pid: int = field(default_factory=os.getpid)

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid, "scheduler_leader": self.leader.holds(),
                "rate_limit_syncs": self.limits.syncs if self.limits else 0}

    def keep_membership(self, stop: threading.Event, every: float = 0.5) -> threading.Thread:
        """Renew this node's membership (Membership.keep) until ``stop``, in a daemon thread
        (``every``: store/pg_shared.py KEEP_EVERY, which its cold-start grace counts on)."""
        def run() -> None:
            while not stop.wait(every):
                self.membership.keep()
        thread = threading.Thread(target=run, name="ferrohsm-membership", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.leader.close()
        if self.limits is None or self.limits.thread is None:  # else its thread closes it
            self.usage.close()
        self.membership.close()
        if self.leases is not None:
            self.leases.close()
