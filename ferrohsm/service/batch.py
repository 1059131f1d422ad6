"""Many cryptographic items in one request: THE per-item path of every batch surface.

``CryptoItems.batch(ctx, action, size)`` opens a ``CryptoBatch`` for one request (the native
``{"batch": [...]}`` bodies of api/handlers/crypto.py, the Vault transit ``batch_input`` and
single requests of api/handlers/transit.py); each item then goes through ONE method per
operation, ``encrypt``, ``decrypt``, ``sign``, ``verify`` (same arguments and results as
KeyService's), ``rewrap`` (decrypt, then encrypt under the primary version: one item, two
records), or ``refuse`` for an item the surface could not even parse. Each item gets what a
request of its own would get:

- rate limit: a batch of n items spends n tokens of the actor's bucket, the request's own (spent
  at the door like every request's) for the first item and n-1 more taken up front when the batch
  opens; the items the bucket could not pay for are refused 429 one by one (or, with
  ``pay_all``, the whole batch is, before any item runs: Vault's semantics);
- authorization, tag scoping and key state: THE policy decision (``Guard.admit``) once per
  distinct (operation, key) of the batch, the lifecycle check per item in the key engine; the key
  is looked up once per distinct key and the batch works on that copy;
- dual control: an item under an approval rule passes the gate itself, exactly as a request
  would (parked with its own approval, or redeeming the one ``X-Approval-ID`` names when its
  arguments are the approved ones);
- audit: every item is in a record naming its key, version and outcome. Items of one batch with
  the same operation, key, version and outcome (and message) share ONE record that lists their
  positions (``details.batch_items``, ranges such as ``0-41,43-99``; a long list is split over
  several records), so a batch of 100 good items costs one record, not 100. ``finish`` writes
  them: deferred to the request's tickets on the event loop (one group commit for the request),
  otherwise as one group made durable by one wait. Nothing is answered before they are durable.

An item refused on the way raises its FerroError marked ``Recorded`` (its record is tallied);
the surface turns it into that item's error object.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..auth.permissions import Action
from ..auth.ratelimit import RateLimiter
from ..control.policy import ALLOWED, Decision
from ..domain.errors import (
    BadRequest,
    FerroError,
    RateLimited,
    Recorded,
    recorded,
)
from ..domain.model import Key, RequestContext
from .guard import audit_message, key_ref
from .keys import OPERATION, KeyService, require_primary, rewrap_blocked, rewrap_refusal

MAX_RANGES = 200  # characters of item positions per record (the audit log keeps 256 per detail)


class Durability(Protocol):
    """The audit sink's ticket API, for a batch run where no request tickets are waited for."""

    def wait(self, ticket: Any) -> None: ...
    def is_durable(self, ticket: Any) -> bool: ...


@dataclass(slots=True)
class _Tally:
    """The items of one record: positions, and bytes processed (for the message)."""

    key: Key | None
    key_id: str | None
    items: list[int] = field(default_factory=list)
    nbytes: int = 0


# (action, key id or "", key ref when no key, version, outcome, message)
GroupKey = tuple[str, str, str, int | None, str, str]


class CryptoItems:
    """Opens batches: what a batch may hold, and where its rate-limit tokens come from."""

    def __init__(self, keys: KeyService, limiter: RateLimiter | None = None,
                 max_items: int = 1000, durability: Durability | None = None) -> None:
        self.keys = keys
        self.limiter = limiter
        self.max_items = max_items
        self.durability = durability

    def batch(self, ctx: RequestContext, action: Action, size: int, *,
              pay_all: bool = False) -> CryptoBatch:
        """A batch of ``size`` items of ``action``. Refused whole (and recorded) only for what
        no item could change: a role that may never perform ``action`` (403), no items (400),
        more than ``max_items`` (400, as the API description's maxItems says); with
        ``pay_all``, also when the bucket cannot pay for every item (429)."""
        def open_batch() -> CryptoBatch:
            if size < 1:
                raise BadRequest(f"a batch holds 1 to {self.max_items} items")
            if size > self.max_items:
                raise BadRequest(f"a batch holds at most {self.max_items} items "
                                 f"(this one has {size}); split it")
            if pay_all:
                self._payable(ctx, size)
            granted, wait = self._take(ctx, size - 1, whole=pay_all)
            if pay_all and granted < size - 1:  # nothing was spent: the caller may retry
                raise _limited(wait)
            return CryptoBatch(self, ctx, size, 1 + granted, wait)
        return self.keys.guard.run(ctx, action, open_batch)

    def single(self, ctx: RequestContext) -> SingleItem:
        """The same calls for a request that is not a batch (see SingleItem)."""
        return SingleItem(self.keys, ctx)

    def _payable(self, ctx: RequestContext, size: int) -> None:
        """A batch paid for whole that is larger than the actor's burst can never be paid:
        400 saying so, not a 429 whose Retry-After a client would follow forever."""
        principal = ctx.principal
        if self.limiter is None or principal is None:
            return
        burst = self.limiter.burst_of(principal.role.value)
        if size > burst:
            raise OverBurst(f"a batch of {size} items is more than this actor's rate limit "
                             f"allows at once ({burst:g}): split it into batches of at most "
                             f"{burst:g}")

    def _take(self, ctx: RequestContext, count: int, whole: bool) -> tuple[int, float]:
        principal = ctx.principal
        if self.limiter is None or principal is None or count <= 0:
            return count, 0.0
        return self.limiter.take_actor_upto(principal.subject, principal.role.value, count,
                                            time.monotonic(), whole)


class CryptoBatch:
    """One request's items (see the module docstring). Use as a context manager, or call
    ``finish`` once every item ran: the records are written there."""

    def __init__(self, items: CryptoItems, ctx: RequestContext, size: int, granted: int,
                 wait: float) -> None:
        self.ctx = ctx
        self.size = size
        self._service = items.keys
        self._engine = items.keys.engine
        self._durability = items.durability
        self._granted = granted  # items 0 .. granted-1 are paid for
        self._wait = wait
        self._next = 0
        self._admitted: dict[tuple[Action, str], tuple[Key, Decision] | FerroError] = {}
        self._tally: dict[GroupKey, _Tally] = {}
        self._finished = False

    def __enter__(self) -> CryptoBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    # ---- the per-item operations: the results of KeyService's, or a Recorded FerroError ----

    def encrypt(self, ref: str, plaintext: bytes, aad: bytes | None = None, *,
                version: int | None = None) -> dict[str, Any]:
        """``version``: the one the caller asks for, refused unless it is the primary."""
        return self._encrypt(self._take_index(), ref, plaintext, aad, version)

    def _encrypt(self, index: int, ref: str, plaintext: bytes, aad: bytes | None,
                 version: int | None) -> dict[str, Any]:
        key = self._begin(index, Action.ENCRYPT, ref,
                          lambda: {"plaintext": plaintext, "aad": aad},
                          None if version is None else lambda k: require_primary(k, version))
        try:
            token, used = self._engine.encrypt(key, plaintext, aad,
                                               wait=self.ctx.tickets is None)
        except FerroError as exc:
            raise self._error(index, Action.ENCRYPT, ref, key, exc) from None
        self._done(index, Action.ENCRYPT, key, used, "encrypted", len(plaintext))
        return {"ciphertext": token, "key_id": key.id, "key_version": used}

    def decrypt(self, ref: str, ciphertext: str, aad: bytes | None = None) -> dict[str, Any]:
        plaintext, version = self._decrypt(self._take_index(), ref, ciphertext, aad)
        return {"plaintext": plaintext, "key_version": version}

    def _decrypt(self, index: int, ref: str, ciphertext: str,
                 aad: bytes | None) -> tuple[bytes, int]:
        key = self._begin(index, Action.DECRYPT, ref,
                          lambda: {"ciphertext": ciphertext, "aad": aad})
        try:
            plaintext, version = self._engine.decrypt(key, ciphertext, aad)
        except FerroError as exc:
            raise self._error(index, Action.DECRYPT, ref, key, exc) from None
        self._done(index, Action.DECRYPT, key, version, "decrypted", len(plaintext))
        return plaintext, version

    def rewrap(self, ref: str, ciphertext: str, aad: bytes | None = None, *,
               version: int | None = None) -> dict[str, Any]:
        """Decrypt, then encrypt under the primary version (or ``version``, which must be it):
        ONE item (one position, one rate-limit token), authorized, approved and recorded as a
        decrypt and an encrypt; the plaintext never leaves this call. The result is encrypt's."""
        index = self._take_index()
        self._rewrappable(index, ref)
        plaintext, _ = self._decrypt(index, ref, ciphertext, aad)
        return self._encrypt(index, ref, plaintext, aad, version)

    def _rewrappable(self, index: int, ref: str) -> None:
        """A rewrap under dual control of its decrypt or its encrypt is refused before either
        half runs: one X-Approval-ID cannot cover both, so the decrypt's approval would be
        spent, and the plaintext recovered, for an encrypt that is then refused."""
        key = rewrap_blocked(lambda action: self._admit(action, ref))
        if key is not None:
            raise self._failed(index, Action.DECRYPT, ref, key, rewrap_refusal(key))

    def sign(self, ref: str, data: bytes, *, prehashed: bool,
             scheme: str | None = None) -> dict[str, Any]:
        index = self._take_index()
        key = self._begin(index, Action.SIGN, ref, lambda: {
            "data": data, "prehashed": prehashed, "scheme": scheme})
        try:
            signature, used, version = self._engine.sign(key, data, prehashed, scheme)
        except FerroError as exc:
            raise self._error(index, Action.SIGN, ref, key, exc) from None
        self._done(index, Action.SIGN, key, version, f"signed with {used}", None)
        return {"signature": signature, "key_version": version, "algorithm": used}

    def verify(self, ref: str, data: bytes, signature: bytes, *, prehashed: bool,
               scheme: str | None = None, version: int | None = None) -> dict[str, Any]:
        index = self._take_index()
        key = self._begin(index, Action.VERIFY, ref, lambda: {
            "data": data, "signature": signature, "prehashed": prehashed, "scheme": scheme,
            "version": version})
        try:
            valid, used = self._engine.verify(key, data, signature, prehashed, scheme, version)
        except FerroError as exc:
            raise self._error(index, Action.VERIFY, ref, key, exc) from None
        self._done(index, Action.VERIFY, key, used,
                   "signature valid" if valid else "signature INVALID", None)
        return {"valid": valid, "key_version": used}

    def refuse(self, action: Action, ref: str, exc: FerroError) -> FerroError:
        """An item the surface could not parse (a 400 of its own): it takes its place and its
        rate-limit token like any item, and is recorded. Returns the error, marked Recorded."""
        index = self._take_index()
        if index >= self._granted:
            exc = _limited(self._wait)
        cached = self._admitted.get((action, ref))
        key = cached[0] if isinstance(cached, tuple) else None
        return self._failed(index, action, ref, key, exc)

    # ---- the steps every item takes ----

    def _take_index(self) -> int:
        if self._finished:
            raise RuntimeError("this batch is finished")
        index = self._next
        self._next += 1
        return index

    def _begin(self, index: int, action: Action, ref: str,
               args: Callable[[], dict[str, Any]],
               check: Callable[[Key], None] | None = None) -> Key:
        """For item ``index``: rate limit, authorization (cached per key), ``check`` of the
        key, dual control."""
        key = None
        try:
            if index >= self._granted:
                raise _limited(self._wait)
            key, decision = self._admit(action, ref)
            if check is not None:
                check(key)
            if decision is not ALLOWED:  # an approval to request or redeem, per item
                self._service.dual.gate(self.ctx, action, key, args(), decision)
        except FerroError as exc:
            raise self._failed(index, action, ref, key, exc) from None
        return key

    def _error(self, index: int, action: Action, ref: str, key: Key,
               exc: FerroError) -> FerroError:
        """The engine refused the item: counted in the metrics, tallied, marked Recorded."""
        self._service.on_crypto(key.algorithm, OPERATION[action], "error")
        return self._failed(index, action, ref, key, exc)

    def _admit(self, action: Action, ref: str) -> tuple[Key, Decision]:
        found = self._admitted.get((action, ref))
        if found is None:
            try:
                found = self._service.guard.admit(self.ctx, action, ref)
            except FerroError as exc:
                found = exc
            self._admitted[(action, ref)] = found
        if isinstance(found, FerroError):
            raise found.with_traceback(None)
        return found

    def _done(self, index: int, action: Action, key: Key, version: int, label: str,
              nbytes: int | None) -> None:
        tally = self._group((action, key.id, "", version, "success", label), key, None)
        tally.items.append(index)
        if nbytes is not None:
            tally.nbytes += nbytes
        self._service.on_crypto(key.algorithm, OPERATION[action], "success")

    def _failed(self, index: int, action: Action, ref: str, key: Key | None,
                exc: FerroError) -> FerroError:
        """Tally the refusal of item ``index`` (unless its record exists already, e.g. a parked
        approval's) and return it marked Recorded."""
        if isinstance(exc, Recorded):
            return exc
        named = exc.details.get("key_id")
        key_id = key.id if key is not None else named if isinstance(named, str) else None
        group = (action.value, key_id or "", "" if key_id else key_ref(ref), None,
                 exc.outcome, f"{exc.status} {exc.code}: {audit_message(exc)}")
        self._group(group, key, key_id).items.append(index)
        return recorded(exc)

    def _group(self, group: GroupKey, key: Key | None, key_id: str | None) -> _Tally:
        tally = self._tally.get(group)
        if tally is None:
            tally = self._tally[group] = _Tally(key, key_id)
        return tally

    # ---- the records ----

    def finish(self) -> None:
        """Write the batch's records (once): each a group of items (module docstring). On the
        event loop they join the request's tickets; otherwise they are made durable here, with
        one wait for all of them. AuditUnavailable when they cannot be: then no item may be
        answered (the request fails 503)."""
        if self._finished:
            return
        self._finished = True
        ctx = self.ctx
        local = ctx.tickets is None and self._durability is not None
        if local:
            ctx = ctx._replace(tickets=[])
        for group, tally in self._tally.items():
            for positions in _ranges(tally.items):
                self._record(ctx, group, tally, positions)
        if local and ctx.tickets:
            assert self._durability is not None  # noqa: S101  narrows a type for mypy
            self._durability.wait(ctx.tickets[-1])  # one flush covers every earlier record
            for ticket in ctx.tickets:
                self._durability.is_durable(ticket)  # raises AuditUnavailable if one failed

    def _record(self, ctx: RequestContext, group: GroupKey, tally: _Tally,
                positions: tuple[str, int]) -> None:
        action, _, ref, version, outcome, label = group
        ranges, count = positions
        what = f"{count} batch item{'s' if count != 1 else ''}"
        if outcome == "success":
            message = f"{label} {what}" + (f", {tally.nbytes} bytes" if tally.nbytes else "")
        else:
            message = f"{what} refused: {label}"
        details: dict[str, Any] = {"batch_items": ranges, "batch_size": self.size}
        if tally.key is None and tally.key_id is None and ref:
            details["key_ref"] = ref
        self._service.guard.record(ctx, action, outcome, message, tally.key, version,
                                   key_id=tally.key_id, defer=True, **details)


class SingleItem:
    """A CryptoBatch's calls for a request of ONE item (same arguments and results), through
    KeyService's single-request path: the same authorization, dual control and audit, one
    record per call and no batch positions, the request's own rate-limit token; and without a
    batch's bookkeeping, which would cost a single request ~25 % more CPU in its handler."""

    def __init__(self, keys: KeyService, ctx: RequestContext) -> None:
        self.keys = keys
        self.ctx = ctx

    def encrypt(self, ref: str, plaintext: bytes, aad: bytes | None = None, *,
                version: int | None = None) -> dict[str, Any]:
        return self.keys.encrypt(self.ctx, ref, plaintext, aad, version=version)

    def decrypt(self, ref: str, ciphertext: str, aad: bytes | None = None) -> dict[str, Any]:
        return self.keys.decrypt(self.ctx, ref, ciphertext, aad)

    def rewrap(self, ref: str, ciphertext: str, aad: bytes | None = None, *,
               version: int | None = None) -> dict[str, Any]:
        """A decrypt and an encrypt, as CryptoBatch.rewrap (two records)."""
        self.keys.rewrappable(self.ctx, ref)
        plaintext = self.decrypt(ref, ciphertext, aad)["plaintext"]
        return self.encrypt(ref, plaintext, aad, version=version)

    def sign(self, ref: str, data: bytes, *, prehashed: bool,
             scheme: str | None = None) -> dict[str, Any]:
        return self.keys.sign(self.ctx, ref, data, prehashed=prehashed, scheme=scheme)

    def verify(self, ref: str, data: bytes, signature: bytes, *, prehashed: bool,
               scheme: str | None = None, version: int | None = None) -> dict[str, Any]:
        return self.keys.verify(self.ctx, ref, data, signature, prehashed=prehashed,
                                scheme=scheme, version=version)


Items = CryptoBatch | SingleItem  # what a surface runs an item through


class OverBurst(BadRequest):
    """A batch the actor's rate limit can never pay for whole: a 400 (split it), recorded as
    the rate limit's refusal (denied), as its 429 was."""

    outcome = "denied"


def _limited(wait: float) -> RateLimited:
    seconds = max(1, int(wait + 0.999))
    return RateLimited(f"rate limit exceeded; retry in {seconds} s", retry_after=wait)


def _ranges(items: list[int]) -> list[tuple[str, int]]:
    """Item positions as compact ranges ("0-41,43-99"), split into pieces of at most
    MAX_RANGES characters: (ranges, how many items they cover)."""
    spans: list[str] = []
    counts: list[int] = []
    start = prev = items[0]
    for index in items[1:]:
        if index != prev + 1:
            spans.append(f"{start}-{prev}" if prev != start else str(start))
            counts.append(prev - start + 1)
            start = index
        prev = index
    spans.append(f"{start}-{prev}" if prev != start else str(start))
    counts.append(prev - start + 1)
    out: list[tuple[str, int]] = []
    text, count = "", 0
    for span, n in zip(spans, counts, strict=True):
        if text and len(text) + 1 + len(span) > MAX_RANGES:
            out.append((text, count))
            text, count = "", 0
        text = f"{text},{span}" if text else span
        count += n
    out.append((text, count))
    return out
