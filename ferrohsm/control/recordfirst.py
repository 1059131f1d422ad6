"""The three records of a state change, for every writer: intent, then success or rolled_back.

A state change (a key's record: service/changes.py; an approval: dualcontrol.py) is recorded
before it is applied and settled after:

1. ``intend``: an INTENT record, durable before anything is written. When it cannot be written
   the caller is refused (503) and nothing was applied: there is nothing to undo.
2. the caller's store write.
3. ``confirm`` (SUCCESS) when the write happened, ``roll_back`` (ROLLED_BACK) when it did not;
   both name the intent's seq (``intent_seq``).

When a settling record cannot be written, the change is applied (or not) and the log does not say
so yet: the audit log is turned off, so nothing else happens meanwhile, until that record is
written (retried once a second: a database back after a restart, a disk with room again), or,
when the sink itself failed, until a restart, whose reconciliation (integrity/reconcile.py)
settles the intent from the store. ``unknown`` (applied or not cannot be told) makes the record
by reading the store again, once it can be read.

``IdLocks`` serialises the writers of one record within a process, so they do not make each other
retry; compare-and-swap still guards against other processes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from ..auth.permissions import Action
from ..domain import binding
from ..domain.errors import AuditUnavailable
from ..domain.model import Key, RequestContext

# What the caller of a change is told when its settling record could not be written: what
# happened to the change (the driver's words are the operator's, in the server log).
APPLIED_UNCONFIRMED = ("the change was applied, but its audit record is not durable yet: this "
                       "node refuses requests until it is; read the key (or approval) before "
                       "retrying")
NOT_APPLIED_UNRECORDED = ("the change was not applied, and its audit record is not durable "
                          "yet: this node refuses requests until it is")


class Recorder(Protocol):
    """The service's guard (service/guard.py): durable records, and the fail-closed switches.
    A record made and not written (``event``) is the audit layer's; here it is only handed on
    (``settle``: one, or a function that makes one once the store can tell)."""

    def record(self, ctx: RequestContext, action: Action | str, outcome: str, message: str,
               key: Key | None = None, version: int | None = None, *,
               key_id: str | None = None, defer: bool = False,
               **details: Any) -> object: ...

    def require_audit(self) -> None: ...

    def fail_closed(self, reason: str) -> None: ...

    def event(self, ctx: RequestContext, action: Action | str, outcome: str, message: str,
              key: Key | None = None, version: int | None = None, *,
              key_id: str | None = None, **details: Any) -> Any: ...

    def fail_until_recorded(self, reason: str, settle: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class Intent:
    """The durable intent record of one change (what a stored key record is bound to)."""

    seq: int
    hash: str


class Steps:
    """intend / confirm / roll_back over one recorder (module docstring)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def intend(self, ctx: RequestContext, action: Action | str, message: str,
               key: Key | None = None, version: int | None = None, *,
               key_id: str | None = None, **details: Any) -> Intent:
        """The durable intent (AuditUnavailable: refused, nothing applied). It names this node
        when several share the store: if the node dies before settling it, a live one does."""
        node = getattr(self.recorder, "node", None)
        if node:
            details = {**details, "node": node}
        record = self.recorder.record(ctx, action, binding.INTENT, f"intent: {message}", key,
                                      version, key_id=key_id, **details)
        if not isinstance(record, dict):  # only a deferred record is not; intents never are
            raise AuditUnavailable("the intent record was not made durable")
        return Intent(int(record["seq"]), str(record["hash"]))

    def confirm(self, ctx: RequestContext, action: Action | str, message: str, intent: Intent,
                key: Key | None = None, version: int | None = None, *,
                key_id: str | None = None, **details: Any) -> None:
        """The success record, durable before the caller hears of the change."""
        try:
            self.recorder.record(ctx, action, binding.SUCCESS, message, key, version,
                                 key_id=key_id, intent_seq=intent.seq, **details)
        except AuditUnavailable as exc:
            what = key.id if key else key_id
            self.recorder.fail_until_recorded(
                f"a change of {what} was applied (intent seq {intent.seq}) but its confirmation "
                f"could not be recorded: {exc.message}",
                self.success(ctx, action, message, intent, key, version, key_id=key_id,
                             **details))
            raise AuditUnavailable(APPLIED_UNCONFIRMED) from None

    def roll_back(self, ctx: RequestContext, action: Action | str, message: str,
                  intent: Intent, key_id: str | None, **details: Any) -> None:
        """The rolled_back record of a change that was not applied."""
        try:
            self.recorder.record(ctx, action, binding.ROLLED_BACK, message, key_id=key_id,
                                 intent_seq=intent.seq, **details)
        except AuditUnavailable as exc:
            self.recorder.fail_until_recorded(
                f"a change of {key_id} was not applied (intent seq {intent.seq}) but its "
                f"rollback could not be recorded: {exc.message}",
                self.rolled_back(ctx, action, message, intent, key_id, **details))
            raise AuditUnavailable(NOT_APPLIED_UNRECORDED) from None

    def success(self, ctx: RequestContext, action: Action | str, message: str, intent: Intent,
                key: Key | None = None, version: int | None = None, *,
                key_id: str | None = None, **details: Any) -> Any:
        """The success record of ``intent``, made, not written (for a later settlement)."""
        return self.recorder.event(ctx, action, binding.SUCCESS, message, key, version,
                                   key_id=key_id, intent_seq=intent.seq, **details)

    def rolled_back(self, ctx: RequestContext, action: Action | str, message: str,
                    intent: Intent, key_id: str | None, **details: Any) -> Any:
        """The rolled_back record of ``intent``, made, not written."""
        return self.recorder.event(ctx, action, binding.ROLLED_BACK, message, key_id=key_id,
                                   intent_seq=intent.seq, **details)

    def unknown(self, what: str, intent: Intent, problem: str,
                resolve: Callable[[], Any] | None = None) -> None:
        """Neither applied nor not applied can be told now: fail closed until ``resolve`` (the
        store read back: the settling record) can tell and its record is written, or, without
        it, until a restart."""
        reason = f"the change of {what} (intent seq {intent.seq}) may or may not be applied: " \
                 f"{problem}"
        if resolve is None:
            self.recorder.fail_closed(reason)
        else:
            self.recorder.fail_until_recorded(reason, resolve)


class IdLocks:
    """One lock per id, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, list[int]]] = {}

    @contextmanager
    def hold(self, ident: str) -> Iterator[None]:
        with self._mutex:
            lock, users = self._locks.setdefault(ident, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._mutex:
                users[0] -= 1
                if not users[0]:
                    del self._locks[ident]
