"""Fixtures for the KeyStore conformance suite: every backend, and a key factory.

A new KeyStore is done when test_keystore.py passes against it: add it to ``_openers`` below
(and, if it keeps records outside the process, to ``_raw_records``). Every store authenticates
its records under ``RECORD_MAC``. Stores never see real key material, so keys carry fake sealed
bytes (all 256 byte values, so an encoding bug cannot hide).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pgserver
import pytest
from backends import serve_backend
from keystores import RECORD_MAC, Backend, KeyFactory, RawRecords

from ferrohsm.store.filesystem import FilesystemStore
from ferrohsm.store.keystore import KeyStore
from ferrohsm.store.memory import MemoryStore
from ferrohsm.store.pgdb import PgDatabase
from ferrohsm.store.postgres import PostgresStore
from ferrohsm.store.remote import KEYS, InMemoryRemoteVault, RemoteKeyStore
from ferrohsm.store.sqlite import SQLiteStore


def _openers(tmp_path: Path, vault: InMemoryRemoteVault
             ) -> dict[str, tuple[bool, Callable[[], KeyStore]]]:
    return {
        "memory": (False, lambda: MemoryStore(RECORD_MAC)),
        "filesystem": (True, lambda: FilesystemStore(tmp_path / "data", RECORD_MAC)),
        "sqlite": (True, lambda: SQLiteStore(tmp_path / "db" / "keys.sqlite3", RECORD_MAC)),
        "remote": (True, lambda: RemoteKeyStore(vault, RECORD_MAC)),
    }


@pytest.fixture
def vault() -> InMemoryRemoteVault:
    """Plays the remote service: it outlives store instances."""
    return InMemoryRemoteVault()


@pytest.fixture
def pg_dsn() -> str:
    """A fresh schema on the session's PostgreSQL server (the test skips without one)."""
    return pgserver.shared().new_schema()


@pytest.fixture(params=["memory", "filesystem", "sqlite", "remote", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path,
            vault: InMemoryRemoteVault) -> Iterator[Backend]:
    if request.param == "postgres":
        dsn: str = request.getfixturevalue("pg_dsn")
        opener: Callable[[], KeyStore] = lambda: PostgresStore(PgDatabase(dsn), RECORD_MAC)
        yield from serve_backend("postgres", True, opener)
        return
    yield from serve_backend(request.param, *_openers(tmp_path, vault)[request.param])


def _file_records(keys: Path) -> RawRecords:
    def write(key_id: str, data: bytes) -> None:
        fresh = keys / "edited.tmp"  # a new inode, renamed over: what an editor does
        fresh.write_bytes(data)
        os.replace(fresh, keys / f"{key_id}.json")
    return RawRecords(lambda key_id: (keys / f"{key_id}.json").read_bytes(), write)


def _sqlite_records(path: Path) -> RawRecords:
    def read(key_id: str) -> bytes:
        with sqlite3.connect(path) as conn:
            row = conn.execute("SELECT record FROM keys WHERE id = ?", (key_id,)).fetchone()
        return str(row[0]).encode()

    def write(key_id: str, data: bytes) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("UPDATE keys SET record = ? WHERE id = ?", (data.decode(), key_id))
        finally:
            conn.close()
    return RawRecords(read, write)


def _vault_records(vault: InMemoryRemoteVault) -> RawRecords:
    def read(key_id: str) -> bytes:
        item = vault.read(KEYS + key_id)
        assert item is not None
        return item.data

    def write(key_id: str, data: bytes) -> None:
        item = vault.read(KEYS + key_id)
        vault.write(KEYS + key_id, data, None if item is None else item.etag)
    return RawRecords(read, write)


def _postgres_records(dsn: str) -> RawRecords:
    import psycopg

    def read(key_id: str) -> bytes:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT record FROM keys WHERE id = %s", (key_id,)).fetchone()
        assert row is not None
        return bytes(row[0])

    def write(key_id: str, data: bytes) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE keys SET record = %s WHERE id = %s", (data, key_id))
    return RawRecords(read, write)


@pytest.fixture
def raw(backend: Backend, tmp_path: Path, vault: InMemoryRemoteVault,
        request: pytest.FixtureRequest) -> RawRecords:
    """The stored records, behind the store's back (as someone with access to the storage)."""
    if backend.kind == "filesystem":
        return _file_records(tmp_path / "data" / "keys")
    if backend.kind == "sqlite":
        return _sqlite_records(tmp_path / "db" / "keys.sqlite3")
    if backend.kind == "remote":
        return _vault_records(vault)
    if backend.kind == "postgres":
        return _postgres_records(request.getfixturevalue("pg_dsn"))
    pytest.skip(f"the {backend.kind} store keeps its records inside the process")


@pytest.fixture
def store(backend: Backend) -> KeyStore:
    return backend.open()


@pytest.fixture
def factory() -> KeyFactory:
    return KeyFactory()
