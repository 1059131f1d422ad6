"""KeyService: the one path every key operation takes.

resolve + decide (once) → approvals → lifecycle → intent → store → confirmation, inside the
guarded call (service/guard.py): every call, allowed or refused, leaves its audit record, and a
caller hears "success" only after that record is durable. A change of a key is recorded before it
is applied and confirmed after (service/changes.py): when the audit log cannot take the intent,
nothing is applied and the call fails with 503, so no change persists without its record, by
construction rather than by undoing it.

Dual control (control/dualcontrol.py): an action that a key's tags put under dual control gets
an APPROVAL decision (control/policy.py), and ``self.dual.gate`` acts on it: without
``X-Approval-ID`` it creates a pending approval bound to the exact arguments and answers 202; the
repeat with ``X-Approval-ID`` consumes the approval by compare-and-swap before the operation runs,
so it runs at most once however many repeats race. Scheduler moves (authorize=False) are not gated.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from ..auth.permissions import Action, may_see
from ..control.dualcontrol import DualControl
from ..control.policy import ALLOWED, Decision, Policy
from ..crypto.algorithms import ALGORITHMS, USAGES, check_usage
from ..domain import lifecycle as lc
from ..domain.errors import (
    BadRequest,
    Conflict,
    FerroError,
    Gone,
    InvalidTransition,
)
from ..domain.ids import uuid7_at
from ..domain.model import (
    GCM_LIMIT,
    SYSTEM_CONTEXT,
    TAG_RE,
    Key,
    KeyFilter,
    Page,
    Principal,
    RequestContext,
    iso,
    validate_new_description,
    validate_new_name,
    validate_tags,
)
from ..engine.gcmbudget import Spent
from ..engine.keyengine import KeyEngine
from ..store.approvalstore import ApprovalStore
from ..store.keystore import KeyStore, encode_page_token
from .approvals import ApprovalService
from .changes import KeyChanges
from .guard import AuditLog, Guard, utcnow

log = logging.getLogger("ferrohsm.service")
# "crypto.encrypt" -> "encrypt": the operation label of the crypto metrics, computed once
OPERATION = {a: a.value.rpartition(".")[2] for a in Action}
USE_OF = {Action.ENCRYPT: lc.Use.ENCRYPT, Action.DECRYPT: lc.Use.DECRYPT,
          Action.SIGN: lc.Use.SIGN, Action.VERIFY: lc.Use.VERIFY, Action.WRAP: lc.Use.WRAP,
          Action.UNWRAP: lc.Use.UNWRAP}
DATA_KEY_BITS = (128, 192, 256)  # AES key sizes: what a data key is for
RESERVE_ACTION = "key.reserve_encryptions"  # the audit action of a reservation (gcmbudget.py)


def rewrap_blocked(admit: Callable[[Action], tuple[Key, Decision]]) -> Key | None:
    """The key, when ``admit`` (the guard's decision, per action) puts a rewrap's decrypt or
    encrypt under dual control; None otherwise, also when it refuses outright (each half then
    refuses and records it as it always does)."""
    for action in (Action.DECRYPT, Action.ENCRYPT):
        try:
            key, decision = admit(action)
        except FerroError:
            return None
        if decision is not ALLOWED:
            return key
    return None


def rewrap_refusal(key: Key) -> Conflict:
    """One X-Approval-ID cannot cover both halves of a rewrap: under dual control of either,
    the decrypt's approval would be spent (and the plaintext recovered) for an encrypt that is
    then refused. So such a rewrap is refused before either half runs."""
    return Conflict(f"key {key.id}: its tags put encrypt or decrypt under dual control, and one "
                    "approval cannot cover both halves of a rewrap; decrypt and encrypt "
                    "separately")


MAX_SCAN_PAGE = 1000  # the most keys a tag-scoped listing reads from the store in one call


class KeyService:
    def __init__(self, store: KeyStore, engine: KeyEngine, audit: AuditLog, *,
                 destroy_grace: Callable[[Key], timedelta] = lambda key: timedelta(hours=24),
                 clock: Callable[[], datetime] = utcnow,
                 on_crypto: Callable[[str, str, str], None] = lambda alg, op, outcome: None,
                 policy: Policy | None = None, approvals: ApprovalStore | None = None
                 ) -> None:
        self.on_crypto = on_crypto  # (algorithm, operation, outcome) for metrics
        self.store = store
        self.engine = engine
        self.audit = audit
        self.destroy_grace = destroy_grace
        self.clock = clock
        self.policy = policy or Policy()
        now = lambda: self.clock()  # read at call time, like every other use of self.clock
        self.guard = Guard(audit, store, self.policy, now)
        self.record = self.guard.record
        self.changes = KeyChanges(store, self.guard)
        self.dual = DualControl(approvals, self.guard, now)
        self.approvals = ApprovalService(self.guard, self.dual, now)
        engine.budget.reserver = self.reserve_encryptions

    # ---- key management ----

    def create_key(self, ctx: RequestContext, *, algorithm: str, usage: str,
                   name: str | None = None, description: str = "",
                   tags: tuple[str, ...] = ()) -> Key:
        def work() -> Key:
            check_usage(algorithm, usage)
            validate_new_name(name)
            validate_new_description(description)
            validate_tags(tags)
            self.guard.require_audit()
            now = self.clock()
            key_id = uuid7_at(now)  # id order is created_at order (listings)
            sealed = self.engine.new_material(algorithm, key_id, 1)
            key = lc.new_key(key_id=key_id, name=name, description=description,
                             algorithm=algorithm, usage=usage, tags=tuple(tags), sealed=sealed,
                             now=now, actor=ctx.actor)
            return self.changes.create(ctx, key, f"created {algorithm} key for {usage}",
                                       name=name, origin=key.origin.value)
        return self.guard.run(ctx, Action.KEY_CREATE, work)

    def list_keys(self, ctx: RequestContext, filters: KeyFilter, limit: int = 100,
                  page_token: str | None = None) -> tuple[Page, int | None]:
        """One page of the keys ``filters`` match, and how many match in all: None for a
        tag-scoped token, which must not learn how many keys it cannot see."""
        def work() -> tuple[Page, int | None]:
            check_filters(filters)
            principal, total = ctx.principal, None
            if principal is not None and principal.tags is not None:
                page = self._visible_page(principal, filters, limit, page_token)
            else:
                page = self.store.checked(self.store.list(filters, limit, page_token))
                total = self.store.count(filters)
            self.record(ctx, Action.KEY_LIST, "success", f"listed {len(page.keys)} keys")
            return page, total
        return self.guard.run(ctx, Action.KEY_LIST, work)

    def _visible_page(self, principal: Principal, filters: KeyFilter, limit: int,
                      page_token: str | None) -> Page:
        """A tag-scoped token's page: up to ``limit`` keys it may see, read on through the
        store's pages until one more visible key shows there is a next page. The token is
        then the last visible key's, and None at the end: the store's own tokens name the
        last key of ITS page, which may be one this token must not learn exists."""
        visible: list[Key] = []
        token = page_token
        size = min(limit + 1, MAX_SCAN_PAGE)  # enough when every key is visible
        while True:  # then pages doubling: one store call a hidden key was slow
            page = self.store.checked(self.store.list(filters, size, token))
            size = min(size * 2, MAX_SCAN_PAGE)
            for key in page.keys:
                if not may_see(principal, key):
                    continue
                if len(visible) == limit:
                    return Page(tuple(visible), encode_page_token(visible[-1].id))
                visible.append(key)
            if page.next_page_token is None:
                return Page(tuple(visible), None)
            token = page.next_page_token

    def get_key(self, ctx: RequestContext, ref: str) -> Key:
        def work(key: Key, decision: Decision) -> Key:
            self.record(ctx, Action.KEY_READ, "success", "described key", key)
            return key
        return self.guard.on_key(ctx, Action.KEY_READ, ref, work)

    def update_key(self, ctx: RequestContext, ref: str, description: str) -> Key:
        def change(key: Key) -> Key:
            validate_new_description(description)
            return lc.update_description(key, description, self.clock(), ctx.actor)
        return self._mutate(ctx, Action.KEY_UPDATE, ref, change, "description updated",
                            args={"description": description})

    def rotate(self, ctx: RequestContext, ref: str) -> Key:
        def possible(key: Key) -> None:
            lc.target_state(key, lc.Move.ROTATE)

        def change(key: Key) -> Key:
            possible(key)  # refuse before generating material
            sealed = self.engine.new_material(key.algorithm, key.id, len(key.versions) + 1)
            return lc.rotate(key, sealed, self.clock(), ctx.actor)
        return self._mutate(ctx, Action.KEY_ROTATE, ref, change, "rotated", args={},
                            possible=possible)

    def rollback(self, ctx: RequestContext, ref: str, version: int) -> Key:
        return self._mutate(ctx, Action.KEY_ROLLBACK, ref,
                            lambda key: lc.rollback(key, version, self.clock(), ctx.actor),
                            f"version {version} is primary again", args={"version": version})

    def revoke(self, ctx: RequestContext, ref: str, reason: str = "") -> Key:
        return self._mutate(ctx, Action.KEY_REVOKE, ref,
                            lambda key: lc.revoke(key, self.clock(), ctx.actor, reason),
                            f"revoked: {reason}" if reason else "revoked",
                            args={"reason": reason})

    def schedule_destroy(self, ctx: RequestContext, ref: str) -> Key:
        return self._mutate(ctx, Action.KEY_DESTROY, ref,
                            lambda key: lc.schedule_destroy(key, self.clock(), ctx.actor,
                                                            self.destroy_grace(key)),
                            "destruction scheduled", args={})

    def cancel_destroy(self, ctx: RequestContext, ref: str) -> Key:
        return self._mutate(ctx, Action.KEY_CANCEL_DESTROY, ref,
                            lambda key: lc.cancel_destroy(key, self.clock(), ctx.actor),
                            "destruction cancelled", args={})

    def complete_destroy(self, ctx: RequestContext, key: Key) -> Key:
        """Called by the scheduler once the grace has passed: erase material, keep metadata.

        The audit record (``key.destroy_complete``) is the attestation: which versions, when,
        scheduled by whom, under which approval, and a SHA-256 of each erased sealed blob.
        """
        message, details = attestation(key, self.clock(), self.store.name,
                                       self.dual.latest_executed(key.id, Action.KEY_DESTROY))
        done = self._mutate(ctx, Action.KEY_DESTROY, key.id,
                            lambda k: lc.complete_destroy(k, self.clock(), ctx.actor),
                            message, authorize=False, audit_action="key.destroy_complete",
                            details=details)
        self.engine.forget(key.id)
        try:
            self.store.scrub()  # journals and free pages may still hold the old sealed bytes
        except FerroError as exc:  # destroyed and recorded; only old copies may linger
            log.error("key %s destroyed but not scrubbed: %s", key.id, exc.message)
        return done

    def destroy_version(self, ctx: RequestContext, ref: str, version: int, *,
                        audit_action: str | None = None, reason: str = "") -> Key:
        """Erase one non-primary version's material now (POST .../versions/{n}/destroy, and the
        scheduler's purge_after_days). Under dual control like destroy; the confirmation record
        attests which material went (the SHA-256 of the sealed blob), from which store, under
        which approval (the one the gate consumed: ctx.approval_id, in every record)."""
        def change(key: Key) -> Key:
            done = lc.destroy_version(key, version, self.clock(), ctx.actor)
            erased = key.version(version).sealed or b""
            details.update(sealed_sha256=hashlib.sha256(erased).hexdigest(),
                           store=self.store.name, destroyed_at=iso(self.clock()))
            return done
        details: dict[str, Any] = {"destroyed_version": version}  # filled in by change()
        why = f" ({reason})" if reason else ""
        done = self._mutate(ctx, Action.KEY_DESTROY_VERSION, ref, change,
                            f"attestation: material of version {version} erased{why}",
                            args={"version": version}, audit_action=audit_action,
                            details=details)
        self.engine.forget(done.id)
        try:
            self.store.scrub()  # journals and free pages may still hold the old sealed bytes
        except FerroError as exc:
            log.error("key %s version %s destroyed but not scrubbed: %s", done.id, version,
                      exc.message)
        return done

    def retire(self, ctx: RequestContext, key_id: str, due: Callable[[Key], bool]) -> Key:
        """The scheduler's max_key_age_days: schedule destruction (with the key's grace) as an
        Administrator's destroy would, dual control included; ``due`` is re-checked on the
        freshest copy so overlapping ticks never schedule twice."""
        def change(key: Key) -> Key:
            if not due(key):
                raise InvalidTransition("the key is no longer due for destruction")
            return lc.schedule_destroy(key, self.clock(), ctx.actor, self.destroy_grace(key))
        return self._mutate(ctx, Action.KEY_DESTROY, key_id, change,
                            "destruction scheduled: max_key_age_days reached", args={},
                            audit_action="scheduler.max_age")

    def scheduled_rotate(self, ctx: RequestContext, key_id: str,
                         due: Callable[[Key], bool]) -> Key:
        """Scheduler rotation; ``due`` is re-checked on the freshest copy, under the key's lock
        and inside the CAS loop, so two overlapping ticks (or processes) never rotate twice."""
        def change(key: Key) -> Key:
            if not due(key):
                raise InvalidTransition("rotation is no longer due")
            lc.target_state(key, lc.Move.ROTATE)
            sealed = self.engine.new_material(key.algorithm, key.id, len(key.versions) + 1)
            return lc.rotate(key, sealed, self.clock(), ctx.actor)
        return self._mutate(ctx, Action.KEY_ROTATE, key_id, change,
                            "automatic rotation: rotation_days reached", authorize=False,
                            audit_action="scheduler.rotate")

    def archive_version(self, ctx: RequestContext, key_id: str, version: int) -> Key:
        """Scheduler archival: the version only decrypts/verifies/unwraps from now on."""
        return self._mutate(ctx, Action.KEY_UPDATE, key_id,
                            lambda k: lc.archive_version(k, version, self.clock(), ctx.actor),
                            f"version {version} archived: archive_after_days reached",
                            authorize=False, audit_action="scheduler.archive",
                            details={"archived_version": version})

    def reserve_encryptions(self, key_id: str, version: int, wanted: int) -> tuple[int, int]:
        """Claim up to ``wanted`` more AES-GCM encryptions of ``version`` in the key record, for
        this process (engine/gcmbudget.py): (granted, the version's new total). A change like
        any other (intent, compare-and-swap, success), by the system, without a history
        entry: nobody changed what the key is. Spent when none are left."""
        details: dict[str, Any] = {"reserved_version": version}
        limit = min(self.engine.budget.limits.limit, GCM_LIMIT)

        def change(key: Key) -> Key:
            lc.check_key_use(key, lc.Use.ENCRYPT)  # a key revoked meanwhile reserves nothing
            chosen = key.version(version)
            if chosen.sealed is None:
                raise Gone(f"version {version} of key {key.id} was destroyed")
            grant = min(wanted, limit - chosen.encryptions_reserved)
            if grant <= 0:
                raise Spent(f"key {key.id} version {version} has all {limit} AES-GCM "
                            "encryptions reserved: rotate the key to encrypt again")
            total = chosen.encryptions_reserved + grant
            details.update(encryptions_reserved=grant, encryptions_reserved_total=total)
            return replace(key, versions=tuple(
                replace(v, encryptions_reserved=total) if v.version == version else v
                for v in key.versions))
        self.changes.update(SYSTEM_CONTEXT, RESERVE_ACTION, key_id, change,
                            f"AES-GCM encryptions of version {version} reserved for "
                            f"{self.guard.node or f'process {os.getpid()}'}", details,
                            details_in_intent=True)
        return details["encryptions_reserved"], details["encryptions_reserved_total"]

    # ---- the mutation protocol ----

    def _mutate(self, ctx: RequestContext, action: Action, ref: str,
                change: Callable[[Key], Key], message: str, authorize: bool = True, *,
                args: dict[str, Any] | None = None, audit_action: str | None = None,
                details: dict[str, Any] | None = None,
                possible: Callable[[Key], object] | None = None) -> Key:
        """Record the intent, apply ``change`` to the freshest copy, confirm (changes.py).
        ``args``: the request's arguments, bound into any approval; ``audit_action`` and
        ``details`` name scheduler moves in the audit log. ``possible`` (default: ``change``
        itself, pure but for rotate's new material) refuses a change that cannot happen
        before an approval is asked for it or spent on it."""
        name = audit_action or action

        def work(key: Key, decision: Decision) -> Key:
            if decision is not ALLOWED:  # an approval to request or redeem
                (possible or change)(key)  # a rollback to no version parks nothing
                self.dual.gate(ctx, action, key, args or {}, decision)
            self.guard.require_audit()
            return self.changes.update(ctx, name, key.id, change, message, details or {})
        return self.guard.on_key(ctx, action, ref, work, audit_action=audit_action,
                                 authorize=authorize)

    # ---- cryptographic operations ----

    def _use(self, ctx: RequestContext, action: Action, ref: str,
             op: Callable[[Key], tuple[Any, int]], message: Callable[[Any], str],
             args: dict[str, Any] | None = None,
             check: Callable[[Key], None] | None = None,
             vet: Callable[[Key], None] | None = None) -> tuple[Key, Any, int]:
        """``check``: what ``op`` does not refuse itself, run on every call; ``vet``: what
        ``op`` refuses anyway, run only before an approval is asked for or spent, so that
        none is given to a call that cannot run (and an allowed call does it once)."""
        def work(key: Key, decision: Decision) -> tuple[Key, Any, int]:
            if check is not None:  # before any approval is asked for a call that cannot run
                check(key)
            if decision is not ALLOWED:  # an approval to request or redeem
                if vet is not None:
                    vet(key)
                if action in USE_OF:  # nor spent on a key that refuses the use
                    lc.check_key_use(key, USE_OF[action])
                self.dual.gate(ctx, action, key, args or {}, decision)
            try:
                result, version = op(key)
            except FerroError:
                self.on_crypto(key.algorithm, OPERATION[action], "error")
                raise
            self.record(ctx, action, "success", message(result), key, version, defer=True)
            self.on_crypto(key.algorithm, OPERATION[action], "success")
            return key, result, version
        return self.guard.on_key(ctx, action, ref, work)

    def rewrappable(self, ctx: RequestContext, ref: str) -> None:
        """Refuse (recorded, 409) a rewrap whose decrypt or encrypt is under dual control,
        before either half runs (``rewrap_refusal``); any other refusal is left to the halves,
        which record it as they always do."""
        key = rewrap_blocked(lambda action: self.guard.admit(ctx, action, ref))
        if key is not None:
            raise self.guard.refused(ctx, Action.DECRYPT, rewrap_refusal(key), key)

    def encrypt(self, ctx: RequestContext, ref: str, plaintext: bytes,
                aad: bytes | None = None, *, version: int | None = None) -> dict[str, Any]:
        """``version``: the one the caller asks to encrypt with, refused unless the primary."""
        key, token, used = self._use(ctx, Action.ENCRYPT, ref,
                                     lambda k: self.engine.encrypt(
                                         k, plaintext, aad, wait=ctx.tickets is None),
                                     lambda _: f"encrypted {len(plaintext)} bytes",
                                     {"plaintext": plaintext, "aad": aad},
                                     None if version is None
                                     else lambda k: require_primary(k, version))
        return {"ciphertext": token, "key_id": key.id, "key_version": used}

    def data_key(self, ctx: RequestContext, ref: str, bits: int = 256, *,
                 include_plaintext: bool = True, aad: bytes | None = None,
                 version: int | None = None,
                 sizes: tuple[int, ...] = DATA_KEY_BITS) -> dict[str, Any]:
        """A fresh data key for envelope encryption, encrypted under ``ref`` (an ``encrypt``
        key): authorized, approved, rate-limited and audited as an encrypt (the record says
        "data key", never the key). ``plaintext`` only when ``include_plaintext``. ``sizes``:
        the ``bits`` a surface offers (Vault's datakey has 512); ``version``: the one the
        caller asks to encrypt with, refused unless it is the primary."""
        if bits not in sizes:
            raise BadRequest("bits must be one of " + ", ".join(map(str, sizes)))
        key, (material, token), used = self._use(
            ctx, Action.ENCRYPT, ref,
            lambda k: _pair(self.engine.data_key(k, bits // 8, aad,
                                                 wait=ctx.tickets is None)),
            lambda _: f"generated a {bits}-bit data key "
                      f"({'plaintext returned' if include_plaintext else 'ciphertext only'})",
            {"data_key_bits": bits, "include_plaintext": include_plaintext, "aad": aad},
            lambda k: require_primary(k, version))
        out: dict[str, Any] = {"ciphertext": token, "key_id": key.id, "key_version": used}
        if include_plaintext:
            out["plaintext"] = material
        return out

    def decrypt(self, ctx: RequestContext, ref: str, ciphertext: str,
                aad: bytes | None = None) -> dict[str, Any]:
        _, plaintext, version = self._use(ctx, Action.DECRYPT, ref,
                                          lambda k: self.engine.decrypt(k, ciphertext, aad),
                                          lambda p: f"decrypted {len(p)} bytes",
                                          {"ciphertext": ciphertext, "aad": aad},
                                          vet=lambda k: self.engine.check_token(
                                              k, ciphertext, lc.Use.DECRYPT))
        return {"plaintext": plaintext, "key_version": version}

    def sign(self, ctx: RequestContext, ref: str, data: bytes, *, prehashed: bool,
             scheme: str | None = None) -> dict[str, Any]:
        def op(k: Key) -> tuple[tuple[bytes, str], int]:
            signature, used, version = self.engine.sign(k, data, prehashed, scheme)
            return (signature, used), version
        _, (signature, used), version = self._use(
            ctx, Action.SIGN, ref, op, lambda r: f"signed with {r[1]}",
            {"data": data, "prehashed": prehashed, "scheme": scheme})
        return {"signature": signature, "key_version": version, "algorithm": used}

    def verify(self, ctx: RequestContext, ref: str, data: bytes, signature: bytes, *,
               prehashed: bool, scheme: str | None = None,
               version: int | None = None) -> dict[str, Any]:
        _, valid, used = self._use(
            ctx, Action.VERIFY, ref,
            lambda k: self.engine.verify(k, data, signature, prehashed, scheme, version),
            lambda v: "signature valid" if v else "signature INVALID",
            {"data": data, "signature": signature, "prehashed": prehashed, "scheme": scheme,
             "version": version})
        return {"valid": valid, "key_version": used}

    def wrap(self, ctx: RequestContext, ref: str, material: bytes) -> dict[str, Any]:
        key, token, version = self._use(ctx, Action.WRAP, ref,
                                        lambda k: self.engine.wrap(k, material),
                                        lambda _: f"wrapped {len(material)} bytes",
                                        {"key_material": material})
        return {"wrapped": token, "key_id": key.id, "key_version": version}

    def unwrap(self, ctx: RequestContext, ref: str, wrapped: str) -> dict[str, Any]:
        _, material, version = self._use(ctx, Action.UNWRAP, ref,
                                         lambda k: self.engine.unwrap(k, wrapped),
                                         lambda m: f"unwrapped {len(m)} bytes",
                                         {"wrapped": wrapped},
                                         vet=lambda k: self.engine.check_token(
                                             k, wrapped, lc.Use.UNWRAP))
        return {"key_material": material, "key_version": version}

    def public_key(self, ctx: RequestContext, ref: str, version: int | None) -> dict[str, Any]:
        _, pem, used = self._use(ctx, Action.KEY_PUBLIC, ref,
                                 lambda k: self.engine.public_pem(k, version),
                                 lambda _: "public key read", {"version": version})
        return {"version": used, "pem": pem}


def require_primary(key: Key, version: int | None) -> None:
    """FerroHSM encrypts with a key's primary version only: a caller asking for another one
    (Vault's ``key_version``) is refused, never silently given the primary."""
    if version and version != key.primary_version:
        raise BadRequest(f"encrypting with a version other than the primary "
                         f"({key.primary_version}) is not supported by FerroHSM")


def _pair(made: tuple[bytes, str, int]) -> tuple[tuple[bytes, str], int]:
    """(plaintext, token, version) as ``_use`` wants it: (result, version)."""
    return (made[0], made[1]), made[2]


def attestation(key: Key, now: datetime, backend: str,
                approval_id: str | None) -> tuple[str, dict[str, Any]]:
    """What a destruction record attests: which material, erased when, from which store,
    scheduled by whom, under which approval. Digests are of SEALED blobs: evidence, not secrets."""
    live = [v for v in key.versions if v.sealed is not None]
    digests = " ".join(f"v{v.version}:{hashlib.sha256(v.sealed or b'').hexdigest()[:16]}"
                       for v in live)
    scheduled = next((h for h in reversed(key.history) if h.action == "destroy"), None)
    by = f"{scheduled.actor} at {iso(scheduled.at)}" if scheduled else "unknown"
    versions = ",".join(str(v.version) for v in live) or "none"
    message = (f"attestation: material of {key.algorithm} key {key.id} versions {versions} "
               f"erased from the {backend} store at {iso(now)}; destruction scheduled by {by}; "
               f"approval {approval_id or 'none'}")
    return message, {"destroyed_versions": versions, "sealed_sha256": digests,
                     "store": backend, "approval_id": approval_id, "destroyed_at": iso(now)}


def check_filters(filters: KeyFilter) -> None:
    """Filters are what the API description says: an algorithm and a usage the registry has, a
    tag spelled as tags are; anything else is a 400, not an empty page."""
    if ((filters.algorithm is not None and filters.algorithm not in ALGORITHMS)
            or (filters.usage is not None and filters.usage not in USAGES)):
        raise BadRequest("unknown algorithm or usage filter")
    if filters.tag is not None and not TAG_RE.fullmatch(filters.tag):
        raise BadRequest("a tag filter is a tag: 1-63 lowercase letters, digits, '.', '_' or '-'")
