"""Record first, apply second, confirm third: the one way a key changes.

1. Under the key's in-process lock (writers in one process never race; compare-and-swap still
   guards against other processes) the new record is computed from a fresh read.
2. An INTENT record is made durable (control/recordfirst.py): the action, the key, the target
   revision, the digest of the new record's canonical bytes and the binding it builds on
   (domain/binding.py). If it cannot be written the call fails with 503 and nothing was applied.
3. The store write, compare-and-swap, of the new record bound to the intent (its seq and hash).
4. The SUCCESS record, naming the intent, durable before the caller hears of the change.

When the write does not happen (another process wrote first: StaleRevision; the store refused)
a ROLLED_BACK record names the intent, and the change is retried (StaleRevision) or refused.
When a store error leaves it unclear, the key is read back: bound to the intent means applied
(confirmed), anything else means not applied (rolled back), unreadable means unknown (the audit
log is failed until a restart).

When a confirmation or rollback cannot be written the audit log is failed too, and start-up
reconciliation (integrity/reconcile.py) settles the intent from the store: a record bound to it,
or a later change built on it, completes it; otherwise it is rolled back. A crash at any step
leaves one of those states.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, NoReturn

from ..auth.permissions import Action
from ..control.recordfirst import IdLocks, Intent, Recorder, Steps
from ..domain import binding
from ..domain.errors import CAS_RETRIES, FerroError, NameTaken, NotFound, StaleRevision
from ..domain.model import Key, RequestContext
from ..store.keystore import KeyStore


class KeyChanges:
    """The record-first protocol over one key store and one audit log (module docstring)."""

    def __init__(self, store: KeyStore, recorder: Recorder) -> None:
        self.store = store
        self.steps = Steps(recorder)
        self.locks = IdLocks()

    def create(self, ctx: RequestContext, key: Key, message: str, **details: Any) -> Key:
        """Store the new ``key``; NameTaken, before any record, when its name is in use."""
        action = Action.KEY_CREATE
        if key.name is not None and self._name_taken(key.name):
            raise NameTaken(f"a key named {key.name!r} already exists")
        with self.locks.hold(key.id):
            target = binding.planned(key, 1)
            intent = self._intend(ctx, action, message, target, 0)
            try:
                stored = self.store.create(binding.bind(target, intent.seq, intent.hash))
            except FerroError as exc:
                self._settle_failed_write(ctx, action, key.id, intent, message, details, exc)
            self._confirm(ctx, action, message, stored, intent, details)
            return stored

    def update(self, ctx: RequestContext, action: Action | str, key_id: str,
               change: Callable[[Key], Key], message: str, details: dict[str, Any], *,
               details_in_intent: bool = False) -> Key:
        """Apply ``change`` to the freshest copy of the key; retried on a compare-and-swap
        conflict with another process, each attempt its own intent. ``details_in_intent``:
        the intent carries ``details`` too (as ``change`` left them), so the log says what the
        change was even when a crash leaves only the intent and a settling record."""
        with self.locks.hold(key_id):
            for _ in range(CAS_RETRIES):
                current = self.store.resolve(key_id)  # never an older copy (keystore.py)
                target = binding.planned(change(current), current.revision + 1)
                intent = self._intend(ctx, action, message, target, current.audit_seq,
                                      details if details_in_intent else {})
                bound = binding.bind(target, intent.seq, intent.hash)
                try:
                    stored = self.store.update(replace(bound, revision=current.revision))
                except StaleRevision:
                    self.steps.roll_back(ctx, action, "not applied: another writer changed the "
                                         "key first", intent, key_id)
                    continue
                except FerroError as exc:
                    self._settle_failed_write(ctx, action, key_id, intent, message, details, exc)
                self._confirm(ctx, action, message, stored, intent, details)
                return stored
        raise StaleRevision("the key kept changing underneath this request; try again")

    def _intend(self, ctx: RequestContext, action: Action | str, message: str, target: Key,
                from_seq: int, details: dict[str, Any] | None = None) -> Intent:
        return self.steps.intend(ctx, action, message, target, target.primary_version,
                                 **(details or {}), **binding.intent_details(target, from_seq))

    def _confirm(self, ctx: RequestContext, action: Action | str, message: str, stored: Key,
                 intent: Intent, details: dict[str, Any]) -> None:
        # stored: from now on an older copy of the record is refused here, read or not since
        self.store.note_binding(stored.id, stored.audit_seq, stored.revision)
        self.steps.confirm(ctx, action, message, intent, stored, stored.primary_version,
                           state=stored.state.value, **details)

    def _settle_failed_write(self, ctx: RequestContext, action: Action | str, key_id: str,
                             intent: Intent, message: str, details: dict[str, Any],
                             exc: FerroError) -> NoReturn:
        """The store raised: read the key back to learn whether the write happened anyway, and
        record that; the caller hears the error either way."""
        try:
            current: Key | None = self.store.get(key_id)
        except NotFound:
            current = None
        except FerroError as again:
            self.steps.unknown(f"key {key_id}", intent, f"the store failed ({exc.message}) and "
                               f"cannot be read back ({again.message})",
                               lambda: self._outcome(ctx, action, key_id, intent, message,
                                                     details, exc))
            raise exc from None
        if current is not None and binding.is_bound_to(current, intent.seq, intent.hash):
            self._confirm(ctx, action, f"{message} (applied, although the store reported: "
                          f"{exc.message})", current, intent, details)
        else:
            self.steps.roll_back(ctx, action, f"not applied: {exc.message}", intent, key_id)
        raise exc

    def _outcome(self, ctx: RequestContext, action: Action | str, key_id: str, intent: Intent,
                 message: str, details: dict[str, Any], exc: FerroError) -> Any:
        """The settling record of a write whose outcome the store could not tell, once it can
        (read back again, every second, by the audit sink: control/recordfirst.py)."""
        try:
            current: Key | None = self.store.get(key_id)
        except NotFound:
            current = None
        if current is not None and binding.is_bound_to(current, intent.seq, intent.hash):
            return self.steps.success(ctx, action, f"{message} (applied, found once the store "
                                      f"could be read again; it had reported: {exc.message})",
                                      intent, current, current.primary_version,
                                      state=current.state.value, **details)
        return self.steps.rolled_back(ctx, action, f"not applied (found once the store could "
                                      f"be read again): {exc.message}", intent, key_id)

    def _name_taken(self, name: str) -> bool:
        try:
            self.store.get_by_name(name)
        except NotFound:
            return False
        return True
