"""Import job stores: one sealed file per job in a private folder, or memory.

The folder store keeps ``<job id>.job`` files, 0600 in a 0700 folder, each written to a temporary
file, fsynced and renamed into place, so a crash leaves a whole job or none, and a job survives a
restart within its 24 hours. The memory store goes with the memory key store: it forgets
everything on restart, as that store does.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..domain.errors import StoreError
from .importjobs import ImportJobStore, check_job_id, is_job_id
from .records import write_error

_SUFFIX = ".job"
_MAX_JOB_BYTES = 64 * 1024  # a sealed job is ~2.5 KiB; refuse to slurp anything large


class MemoryImportJobStore(ImportJobStore):
    name = "memory"

    def __init__(self) -> None:
        self._jobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, job_id: str, sealed: bytes) -> None:
        with self._lock:
            self._jobs[check_job_id(job_id)] = sealed

    def get(self, job_id: str) -> bytes | None:
        with self._lock:
            return self._jobs.get(check_job_id(job_id))

    def delete(self, job_id: str) -> bool:
        with self._lock:
            return self._jobs.pop(check_job_id(job_id), None) is not None

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._jobs)


class FolderImportJobStore(ImportJobStore):
    name = "folder"

    def __init__(self, folder: Path) -> None:
        self._dir = Path(folder)
        self._lock = threading.Lock()
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self._dir, 0o700)
        except OSError as exc:
            raise write_error(f"the import job folder {self._dir}", exc) from None

    def _path(self, job_id: str) -> Path:
        return self._dir / (check_job_id(job_id) + _SUFFIX)

    def put(self, job_id: str, sealed: bytes) -> None:
        path = self._path(job_id)
        tmp = path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, sealed)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            dir_fd = os.open(self._dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise write_error(f"import job {job_id}", exc) from None

    def get(self, job_id: str) -> bytes | None:
        path = self._path(job_id)
        try:
            with open(path, "rb") as handle:
                data = handle.read(_MAX_JOB_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"could not read import job {job_id}: "
                             f"{exc.strerror or 'I/O error'}") from None
        if len(data) > _MAX_JOB_BYTES:
            raise StoreError(f"import job {job_id} is larger than any job this server writes")
        return data

    def delete(self, job_id: str) -> bool:
        with self._lock:  # of two racing deletes, one sees the file
            try:
                self._path(job_id).unlink()
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise write_error(f"import job {job_id}", exc) from None
            return True

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self._dir)
        except OSError as exc:
            raise StoreError(f"could not list import jobs: {exc.strerror or 'I/O error'}") from None
        found = (n[:-len(_SUFFIX)] for n in names if n.endswith(_SUFFIX))
        return sorted(j for j in found if is_job_id(j))
