"""Settling a dead node's intents while the others serve.

A change is recorded before it is applied and settled after (control/recordfirst.py). A node
killed in between leaves an intent nobody settles; the cold start's reconciliation
(reconcile.py) settles such intents, but only when no node is alive: a live node's unsettled
intent is a change in flight, not a leftover. A cluster that is never entirely down kept them
unsettled.

With per-node locks (store/nodelock.py ``FileNodeLeases``) a dead node is known to be dead, not
slow: the kernel dropped its lock. Every intent names its node, so the scheduler's leader
settles the dead node's intents by the cold start's rule (the store holds the record the change
wrote, or a recorded change builds on it: applied; else rolled back), reading the log once per
death (a full read: seconds per million records, to the head the other writers left) and the
store after it. Live nodes go on writing meanwhile; a change of theirs in flight tells too (it
read the record the dead node's change wrote, or one before it). Left for a later pass (10 s):
a key whose stored record is bound to a change made after the log was read, and an approval a
live node is moving (its transitions are few and quick).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from ..audit.sinkbase import ChainedSink
from ..domain.errors import FerroError, NotFound
from ..domain.model import Key
from ..store.approvalstore import ApprovalStore
from ..store.keystore import KeyStore
from .changelog import ChangeLog, read_changes, sink_lines
from .reconcile import Plan, append_settlement, plan_approvals, settle_key

log = logging.getLogger("ferrohsm.integrity")
WHEN = "after its node died (settled by a live node)"


class NodeLeases(Protocol):
    """Which nodes died (their lock taken and held), and their end once settled."""

    node: str

    def dead(self) -> list[str]: ...

    def bury(self, node: str) -> None: ...


class LiveSettler:
    """The scheduler leader's pass over dead nodes (each tick): a node found dead is settled
    at once; one whose intents had to wait, or whose settling failed (the log refused a
    record), is tried again RETRY seconds later, its lock held meanwhile, so the whole log is
    not read again at every tick while a key stays busy."""

    RETRY = 10.0

    def __init__(self, leases: NodeLeases, store: KeyStore, approvals: ApprovalStore | None,
                 sink: ChainedSink, hmac_key: bytes,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.leases, self.store, self.approvals, self.sink = leases, store, approvals, sink
        self._hmac_key, self._clock = hmac_key, clock
        self._waiting: dict[str, float] = {}  # dead node -> when it is tried again

    def __call__(self) -> int:
        """How many intents were settled."""
        now = self._clock()
        dead = set(self.leases.dead()) | {n for n, at in self._waiting.items() if at <= now}
        if not dead:
            return 0
        try:
            head = self.sink.catch_up()[0]  # the other writers' records too, not ours only
            changes = read_changes(sink_lines(self.sink), self._hmac_key, head)
            plan, waiting = _plan(changes, dead, head, self.store, self.approvals)
            for settle in plan.settle:
                append_settlement(self.sink, settle)
        except FerroError as exc:
            self._waiting.update(dict.fromkeys(dead, now + self.RETRY))
            log.warning("integrity: the intents of %d dead node(s) were not settled this "
                        "time: %s", len(dead), exc.message)
            return 0
        for node in dead:
            if node in waiting:
                self._waiting[node] = now + self.RETRY
            else:
                self._waiting.pop(node, None)
                self.leases.bury(node)
        if plan.settle:
            log.warning("integrity: settled %d change(s) left unsettled by %d node(s) that "
                        "died: %d completed, %d rolled back", len(plan.settle), len(dead),
                        sum(s.applied for s in plan.settle),
                        sum(not s.applied for s in plan.settle))
        return len(plan.settle)


def _plan(changes: ChangeLog, dead: set[str], head: int, store: KeyStore,
          approvals: ApprovalStore | None) -> tuple[Plan, set[str]]:
    """The settlements the snapshot can tell, and the dead nodes with intents left for later.

    A dead node's change was applied when the store holds its record, or when a change made
    later built on it: a confirmed one (as at a cold start) or one still open, a live node's in
    flight included (it read the record this change wrote). Otherwise it was not: its node is
    dead, so its write cannot land any more, and any later change built on something else. Only
    a record bound to a change past the log that was read (written meanwhile) waits."""
    plan, waiting = Plan(), set[str]()
    open_keys = changes.open_keys()
    built_on = changes.built_on | {i.from_seq for intents in open_keys.values() for i in intents}
    for key_id, intents in open_keys.items():
        theirs = [i for i in intents if i.node in dead]
        if not theirs:
            continue
        decided, stored = _stored_now(store, key_id, head)
        if decided:
            plan.settle += [settle_key(stored, i, built_on, WHEN) for i in theirs]
        else:
            waiting.update(str(i.node) for i in theirs)
    open_approvals = changes.open_approvals()
    busy = {i.approval_id for i in open_approvals if i.node is not None and i.node not in dead}
    theirs_open = [i for i in open_approvals if i.node in dead]
    waiting.update(str(i.node) for i in theirs_open if i.approval_id in busy)
    plan_approvals(plan, [i for i in theirs_open if i.approval_id not in busy], approvals,
                   changes.approvals_done, WHEN)
    return plan, waiting


def _stored_now(store: KeyStore, key_id: str, head: int) -> tuple[bool, Key | None]:
    """(whether it can be decided now, the key as stored now, past any cache: a write another
    process just made must not be missed). Not yet: a record that cannot be read (failing its
    check), or one bound to a change past the log that was read (written meanwhile)."""
    try:
        stored = store.read_afresh(key_id)
    except NotFound:
        return True, None
    except FerroError:
        return False, None
    return stored.audit_seq <= head, stored
