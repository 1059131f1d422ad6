"""The ImportJobStore conformance suite: every implementation (memory, folder, PostgreSQL) keeps
sealed import jobs byte for byte, refuses what is not a job id, hands a job to exactly one of
racing users, and (the persistent ones) keeps jobs across a restart and between two openers of
the same storage, as two nodes of one PostgreSQL database are."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pgserver
import pytest
from backends import Backend as GenericBackend
from backends import serve_backend

from ferrohsm.domain.errors import BadRequest
from ferrohsm.store.importjobs import ImportJobStore
from ferrohsm.store.importjobs_files import FolderImportJobStore, MemoryImportJobStore
from ferrohsm.store.pgdb import PgDatabase
from ferrohsm.store.postgres_importjobs import PostgresImportJobStore

Backend = GenericBackend[ImportJobStore]
SEALED = bytes(range(256)) * 8  # every byte value: an encoding bug cannot hide


@pytest.fixture(params=["memory", "folder", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "postgres":  # a fresh schema on the session's server (skips without)
        db = PgDatabase(pgserver.shared().new_schema())
        on_db: Callable[[], ImportJobStore] = lambda: PostgresImportJobStore(db)
        yield from serve_backend("postgres", True, on_db)
        db.close()
        return
    if request.param == "memory":
        in_memory: Callable[[], ImportJobStore] = MemoryImportJobStore
        yield from serve_backend("memory", False, in_memory)
        return
    opener: Callable[[], ImportJobStore] = lambda: FolderImportJobStore(tmp_path / "jobs")
    yield from serve_backend("folder", True, opener)


@pytest.fixture
def store(backend: Backend) -> ImportJobStore:
    return backend.open()


def job_id() -> str:
    return str(uuid.uuid4())


def test_a_job_reads_back_byte_for_byte_and_is_listed(store: ImportJobStore) -> None:
    job = job_id()
    assert store.get(job) is None and job not in store.ids()
    store.put(job, SEALED)
    assert store.get(job) == SEALED
    assert job in store.ids()
    store.put(job, b"\x00replaced")  # put again: the new blob
    assert store.get(job) == b"\x00replaced"


def test_a_job_is_deleted_once(store: ImportJobStore) -> None:
    job = job_id()
    store.put(job, SEALED)
    assert store.delete(job) is True
    assert store.delete(job) is False
    assert store.get(job) is None and job not in store.ids()


def test_of_racing_users_exactly_one_deletes_the_job(store: ImportJobStore) -> None:
    job = job_id()
    store.put(job, SEALED)
    wins: list[bool] = []
    start = threading.Barrier(8)

    def use() -> None:
        start.wait()
        wins.append(store.delete(job))
    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 7 + [True]


@pytest.mark.parametrize("bad", ["../keys", "", "0190A5D-not-a-uuid", "x" * 36, 7])
def test_what_is_not_a_job_id_is_refused(store: ImportJobStore, bad: object) -> None:
    for call in (lambda: store.get(bad), lambda: store.delete(bad),  # type: ignore[arg-type]
                 lambda: store.put(bad, SEALED)):  # type: ignore[arg-type]
        with pytest.raises(BadRequest):
            call()


def test_jobs_outlive_a_restart_and_are_shared_by_openers(backend: Backend) -> None:
    if not backend.persistent:
        pytest.skip("the memory store forgets its jobs by design")
    first, second = backend.open(), backend.open()  # two nodes, or a restart
    job, other = job_id(), job_id()
    first.put(job, SEALED)
    second.put(other, b"other")
    assert second.get(job) == SEALED and first.get(other) == b"other"
    assert {job, other} <= set(first.ids()) and {job, other} <= set(second.ids())
    assert second.delete(job) and first.get(job) is None and not first.delete(job)
