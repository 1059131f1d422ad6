"""The ImportJobStore port: where import jobs (key import, BYOK) wait for their one import.

A job is one opaque blob per job id, SEALED by the service under the master key (its wrapping
private key and its dates inside, bound to the job id): a store never sees a private key in
clear and cannot extend a job's life, since any edit fails the seal. Jobs live at most 24 hours
and are used once, so the port is four calls: put, get, delete, list. The folder store keeps
them on one host; the PostgreSQL store (postgres_importjobs.py), in the database every node
shares. ``get`` of a job that is not there is None, not an error: an unknown, used and purged
job answer alike.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import TypeGuard

from ..domain.errors import BadRequest

# The context a job's wrapping key is sealed under (with the job's id as key id): the import
# service seals and opens it, a master-key rekey re-seals it (custody/rekey.py).
JOB_CONTEXT = "import-job-v1"

# A job id is a lowercase UUID (it becomes a file name): fullmatch, never ``$``.
_JOB_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_job_id(job_id: object) -> TypeGuard[str]:
    return isinstance(job_id, str) and _JOB_ID_RE.fullmatch(job_id) is not None


def check_job_id(job_id: object) -> str:
    """The id, once it is a lowercase UUID; BadRequest (which echoes nothing) otherwise."""
    if not is_job_id(job_id):
        raise BadRequest("import_job_id must be an import job id (a lowercase UUID)")
    return job_id


class ImportJobStore(ABC):
    """Sealed import jobs by id. Implementations are safe to call from many threads."""

    name = "abstract"

    @abstractmethod
    def put(self, job_id: str, sealed: bytes) -> None:
        """Durably store a new job (private to the server: 0600 files in a 0700 folder)."""

    @abstractmethod
    def get(self, job_id: str) -> bytes | None:
        """The sealed job, or None when there is none (never made, used, or purged)."""

    @abstractmethod
    def delete(self, job_id: str) -> bool:
        """Remove a job; whether it was there (so of two racing users only one wins)."""

    @abstractmethod
    def ids(self) -> list[str]:
        """Every stored job id, for purging the expired ones."""

    def close(self) -> None:
        """Release what the store holds of its own (nothing, unless it says otherwise)."""
