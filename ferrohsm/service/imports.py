"""Key import (BYOK): import jobs, and keys or versions made from material brought in wrapped.

An import job (``create_job``) is an RSA-3072 wrapping key pair made for one import: the public
half goes to the caller, the private half is sealed under the master key together with the job's
dates and kept in the ImportJobStore until it is used once or its 24 hours pass. The sealed blob
is bound to the job id (the sealing AAD), so a job cannot be moved, edited or extended; a restart
finds it as it was. Expired jobs are refused and deleted when met, when a job is created, and at
start-up.

An import (``import_key``: a new key; ``import_version``: a new primary version of an existing
key) unwraps the material with the job's key (crypto/importwrap.py: one opaque 400 for every way
unwrapping fails), checks it against the declared algorithm, seals it like generated material and
stores it through the record-first protocol (service/changes.py). The versions it makes carry
``origin: imported`` in the authenticated key record. A new key takes the import job's id as its
own: the approval a tag may demand (``approval_actions = ["import"]``) is then bound to the id the
key will have, and a job can make at most one key.

Audit: ``import_job.create`` (job id, expiry), the import's own records (``key.create`` with
``origin: imported`` for a new key, so the start-up loss check sees it like any other creation;
``key.import`` for a new version), every refusal as ``key.import``, and ``import_job.purge``.
Never the material, wrapped or not.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..auth.permissions import Action
from ..control.policy import ALLOWED, Decision, Verdict, decide
from ..crypto import importwrap
from ..crypto.algorithms import check_usage
from ..crypto.seal import Sealer
from ..domain import lifecycle as lc
from ..domain.errors import Conflict, FerroError, Forbidden, Gone, IntegrityError, NotFound
from ..domain.ids import uuid7_at
from ..domain.model import (
    Key,
    Origin,
    RequestContext,
    is_uuid,
    iso,
    parse_iso,
    validate_new_description,
    validate_new_name,
    validate_tags,
)
from ..store.importjobs import JOB_CONTEXT, ImportJobStore, check_job_id
from .keys import KeyService

JOB_LIFETIME = timedelta(hours=24)
MAX_OPEN_JOBS = 1000  # open jobs at once: each is a sealed file; no caller fills the disk
# The sealing context of a job (crypto/seal.py AAD: purpose, id, version, algorithm): no key
# has this algorithm, so a job blob can never be taken for key material or the reverse.
JOB_FORMAT = 1


@dataclass(frozen=True, slots=True)
class ImportJob:
    id: str
    created_at: datetime
    expires_at: datetime
    created_by: str
    private_der: bytes = field(repr=False)  # unsealed in memory only, never printed

    def to_json(self) -> bytes:
        return json.dumps({"format": JOB_FORMAT, "id": self.id, "created_at": iso(self.created_at),
                           "expires_at": iso(self.expires_at), "created_by": self.created_by,
                           "private_key": base64.b64encode(self.private_der).decode("ascii")},
                          sort_keys=True).encode("ascii")

    @classmethod
    def from_json(cls, job_id: str, data: bytes) -> ImportJob:
        doc = json.loads(data)
        if doc.get("format") != JOB_FORMAT or doc.get("id") != job_id:
            raise ValueError("not an import job of this format")
        created, expires = parse_iso(doc["created_at"]), parse_iso(doc["expires_at"])
        if created is None or expires is None:
            raise ValueError("missing dates")
        return cls(job_id, created, expires, str(doc["created_by"]),
                   base64.b64decode(doc["private_key"], validate=True))


def job_view(job: ImportJob) -> dict[str, Any]:
    """The API's import job (docs/api.md): the public wrapping key, never the private one."""
    return {"import_job_id": job.id, "public_key": importwrap.public_pem(job.private_der),
            "wrapping_key_spec": f"RSA_{importwrap.WRAPPING_KEY_BITS}",
            "wrapping_algorithms": list(importwrap.WRAPPING_ALGORITHMS),
            "created_at": iso(job.created_at), "expires_at": iso(job.expires_at)}


class ImportService:
    def __init__(self, keys: KeyService, jobs: ImportJobStore,
                 lifetime: timedelta = JOB_LIFETIME) -> None:
        self.keys = keys
        self.guard = keys.guard
        self.jobs = jobs
        self.lifetime = lifetime
        self._lock = threading.Lock()  # one import at a time: a job is used at most once

    @property
    def sealer(self) -> Sealer:
        """The key engine's sealer, asked each time: an online rekey replaces it (custody/
        online.py), and a copy kept here sealed imports and jobs under the old master key,
        which the rekey then discards (the imported key was lost)."""
        return self.keys.engine.sealer

    def _now(self) -> datetime:
        return self.keys.clock()

    # ---- jobs ----

    def create_job(self, ctx: RequestContext) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            self.guard.require_audit()
            self.purge_expired(ctx)
            if len(self.jobs.ids()) >= MAX_OPEN_JOBS:
                raise Conflict(f"{MAX_OPEN_JOBS} import jobs are open; use them or let them "
                               "expire (24 hours) before creating more")
            now = self._now()
            job = ImportJob(uuid7_at(now), now, now + self.lifetime,
                            ctx.actor, importwrap.new_wrapping_key())
            self.jobs.put(job.id, self.sealer.seal(job.to_json(), key_id=job.id, version=1,
                                                   algorithm=JOB_CONTEXT))
            try:
                self.guard.record(ctx, Action.IMPORT_JOB_CREATE, "success",
                                  f"import job {job.id} created: RSA-3072 wrapping key valid "
                                  f"until {iso(job.expires_at)}", import_job_id=job.id,
                                  expires_at=iso(job.expires_at))
            except FerroError:
                self.jobs.delete(job.id)  # no job without its record
                raise
            return job_view(job)
        return self.guard.run(ctx, Action.IMPORT_JOB_CREATE, work)

    def _open(self, job_id: str) -> ImportJob:
        """The job, unsealed; NotFound (never made, used, purged), Gone (expired: deleted now),
        Conflict (its seal fails: altered, or sealed under another master key)."""
        blob = self.jobs.get(check_job_id(job_id))
        if blob is None:
            raise NotFound(f"no import job {job_id} (a job is used once and expires after "
                           f"{self.lifetime.total_seconds() / 3600:g} hours)")
        try:
            job = ImportJob.from_json(job_id, self.sealer.unseal(
                blob, key_id=job_id, version=1, algorithm=JOB_CONTEXT))
        except (IntegrityError, ValueError, KeyError, TypeError, binascii.Error):
            raise Conflict(f"import job {job_id} failed its integrity check (altered, or sealed "
                           "under another master key); create a new import job") from None
        if self._now() >= job.expires_at:
            self.jobs.delete(job_id)
            raise Gone(f"import job {job_id} expired at {iso(job.expires_at)}; create a new one")
        return job

    def purge_expired(self, ctx: RequestContext) -> int:
        """Delete every expired (or unreadable) job, each with its ``import_job.purge``
        record; how many."""
        purged = 0
        for job_id in self.jobs.ids():
            try:
                self._open(job_id)
                continue
            except Gone:
                why = "expired"
            except Conflict:
                why = "unreadable (failed its integrity check)"
            except NotFound:
                continue
            self.jobs.delete(job_id)
            self.guard.record(ctx, "import_job.purge", "success",
                              f"import job {job_id} purged: {why}", import_job_id=job_id)
            purged += 1
        return purged

    # ---- imports ----

    def import_key(self, ctx: RequestContext, *, import_job_id: str, wrapping_algorithm: str,
                   wrapped: bytes, algorithm: str, usage: str, name: str | None = None,
                   description: str = "", tags: tuple[str, ...] = ()) -> Key:
        """A new key (origin imported) whose id is the import job's."""
        args: dict[str, Any] = {"import_job_id": import_job_id,
                                "wrapping_algorithm": wrapping_algorithm,
                                "wrapped_material": wrapped, "algorithm": algorithm,
                                "usage": usage, "name": name, "description": description,
                                "tags": list(tags)}

        def work() -> Key:
            check_usage(algorithm, usage)
            validate_new_name(name)
            validate_new_description(description)
            validate_tags(tags)
            self.guard.require_audit()
            with self._lock:
                job = self._open(import_job_id)
                material = self._material(job, algorithm, wrapping_algorithm, wrapped)
                sealed = self.sealer.seal(material, key_id=job.id, version=1, algorithm=algorithm)
                key = lc.new_key(key_id=job.id, name=name, description=description,
                                 algorithm=algorithm, usage=usage, tags=tuple(tags),
                                 sealed=sealed, now=self._now(), actor=ctx.actor,
                                 origin=Origin.IMPORTED)
                self._gate(ctx, key, args)
                stored = self.keys.changes.create(
                    ctx, key, f"imported {algorithm} key for {usage} (import job {job.id}, "
                    f"{wrapping_algorithm})", name=name, **_details(job, wrapping_algorithm))
                self.jobs.delete(job.id)
                return stored
        return self.guard.run(ctx, Action.KEY_IMPORT, work, key_of=_job_key(import_job_id))

    def import_version(self, ctx: RequestContext, ref: str, *, import_job_id: str,
                       wrapping_algorithm: str, wrapped: bytes) -> Key:
        """A new primary version of ``ref`` (origin imported), like a rotation."""
        args: dict[str, Any] = {"import_job_id": import_job_id,
                                "wrapping_algorithm": wrapping_algorithm,
                                "wrapped_material": wrapped}

        def work(key: Key, decision: Any) -> Key:
            lc.target_state(key, lc.Move.ROTATE)  # refuse a key that cannot take a version
            with self._lock:
                job = self._open(import_job_id)
                material = self._material(job, key.algorithm, wrapping_algorithm, wrapped)
                self._refuse_reuse(key, material)
                if decision is not ALLOWED:
                    self.keys.dual.gate(ctx, Action.KEY_IMPORT, key, args, decision)
                self.guard.require_audit()

                def change(current: Key) -> Key:
                    sealed = self.sealer.seal(material, key_id=current.id,
                                              version=len(current.versions) + 1,
                                              algorithm=current.algorithm)
                    return lc.import_version(current, sealed, self._now(), ctx.actor)
                stored = self.keys.changes.update(
                    ctx, Action.KEY_IMPORT, key.id, change,
                    f"imported a new primary version (import job {job.id}, "
                    f"{wrapping_algorithm})", _details(job, wrapping_algorithm))
                self.jobs.delete(job.id)
                return stored
        return self.guard.on_key(ctx, Action.KEY_IMPORT, ref, work)

    def _material(self, job: ImportJob, algorithm: str, wrapping_algorithm: str,
                  wrapped: bytes) -> bytes:
        return importwrap.normalize(algorithm, importwrap.unwrap(job.private_der,
                                                                 wrapping_algorithm, wrapped))

    def _refuse_reuse(self, key: Key, material: bytes) -> None:
        """The material of a version the key still has, imported again as its new version, is
        no rotation: the log would record a new version of an unchanged key, and an AES-GCM
        version whose budget of 2^32 encryptions is spent would get a fresh one for the same
        key, past the limit the budget keeps (an outside tester). Refused before anyone is
        asked to approve it. (A destroyed version's material is gone and cannot be compared.)"""
        for v in key.versions:
            if v.sealed is None:
                continue
            held = self.sealer.unseal(v.sealed, key_id=key.id, version=v.version,
                                      algorithm=key.algorithm)
            if hmac.compare_digest(held, material):
                raise Conflict(f"this material is already version {v.version} of key {key.id}: "
                               "import new material, or rotate the key to generate some")

    def _gate(self, ctx: RequestContext, key: Key, args: dict[str, Any]) -> None:
        """The policy decision on the key about to be made (its tags may put import under
        dual control); the gate parks it or redeems the approval."""
        decision = decide(ctx.principal, Action.KEY_IMPORT, key, self.keys.policy, self._now)
        if decision.verdict is Verdict.DENY:
            raise Forbidden(decision.reason, key_id=key.id)
        if decision is ALLOWED and ctx.approval_id is not None:
            # checked and consumed by the gate, as Guard.admit does: else a foreign approval's
            # id would be recorded as authorising an import it never covered
            decision = Decision(Verdict.APPROVAL, "an approval id was given")
        if decision is not ALLOWED:
            self.keys.dual.gate(ctx, Action.KEY_IMPORT, key, args, decision)


def _details(job: ImportJob, wrapping_algorithm: str) -> dict[str, Any]:
    return {"origin": Origin.IMPORTED.value, "import_job_id": job.id,
            "wrapping_algorithm": wrapping_algorithm}


def _job_key(job_id: object) -> Callable[[], str | None]:
    """For a refused new-key import: the id the key would have had (the job's)."""
    return lambda: job_id if isinstance(job_id, str) and is_uuid(job_id) else None
