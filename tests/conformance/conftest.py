"""Fixtures for the KeyStore conformance suite: every backend, and a key factory.

A new KeyStore is done when test_keystore.py passes against it: add it to ``_OPENERS`` below.
Stores never see real key material, so keys carry fake sealed bytes (all 256 byte values, so an
encoding bug cannot hide).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from backends import serve_backend
from keystores import Backend, KeyFactory

from ferrohsm.store.filesystem import FilesystemStore
from ferrohsm.store.keystore import KeyStore
from ferrohsm.store.memory import MemoryStore
from ferrohsm.store.remote import InMemoryRemoteVault, RemoteKeyStore
from ferrohsm.store.sqlite import SQLiteStore


def _openers(tmp_path: Path) -> dict[str, tuple[bool, Callable[[], KeyStore]]]:
    vault = InMemoryRemoteVault()  # plays the remote service: it outlives store instances
    return {
        "memory": (False, MemoryStore),
        "filesystem": (True, lambda: FilesystemStore(tmp_path / "data")),
        "sqlite": (True, lambda: SQLiteStore(tmp_path / "db" / "keys.sqlite3")),
        "remote": (True, lambda: RemoteKeyStore(vault)),
    }


@pytest.fixture(params=["memory", "filesystem", "sqlite", "remote"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from serve_backend(request.param, *_openers(tmp_path)[request.param])


@pytest.fixture
def store(backend: Backend) -> KeyStore:
    return backend.open()


@pytest.fixture
def factory() -> KeyFactory:
    return KeyFactory()
