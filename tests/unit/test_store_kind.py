"""A data directory holding the other local key store is refused before anything is made in it
(datadir.check_store_kind): the wrong ``key_store`` would find its store empty and offer
``--accept-store-loss``, recording every key of the real store as lost."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from ferrohsm.datadir import check_store_kind
from ferrohsm.domain.errors import ConfigError


def _sqlite_dir(root: Path) -> Path:
    sqlite3.connect(root / "keys.sqlite3").close()
    return root


def _filesystem_dir(root: Path) -> Path:
    (root / "keys").mkdir()
    (root / "keys" / "0190a5d2-7c3e-7f00-8000-000000000001.json").write_text("{}")
    return root


@pytest.mark.parametrize(("kind", "make", "found"), [
    ("filesystem", _sqlite_dir, "sqlite"),
    ("memory", _sqlite_dir, "sqlite"),
    ("sqlite", _filesystem_dir, "filesystem"),
    ("memory", _filesystem_dir, "filesystem"),
])
def test_the_other_store_is_named(tmp_path: Path, kind: str, make: Callable[[Path], Path],
                                  found: str) -> None:
    data = make(tmp_path)
    before = sorted(p.name for p in data.iterdir())
    with pytest.raises(ConfigError, match=f"holds a '{found}' key store: set key_store = "
                                          f'"{found}"'):
        check_store_kind(kind, data)
    assert sorted(p.name for p in data.iterdir()) == before  # nothing made in it


@pytest.mark.parametrize("kind", ["filesystem", "sqlite", "memory", "postgres"])
def test_a_fresh_or_matching_directory_passes(tmp_path: Path, kind: str) -> None:
    check_store_kind(kind, tmp_path / "missing")
    check_store_kind(kind, tmp_path)
    (tmp_path / "keys").mkdir()  # an empty keys/ holds no store
    check_store_kind(kind, tmp_path)


def test_each_store_passes_on_its_own_directory(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "f").mkdir()
    check_store_kind("sqlite", _sqlite_dir(tmp_path / "s"))
    check_store_kind("filesystem", _filesystem_dir(tmp_path / "f"))
    check_store_kind("postgres", tmp_path / "s")  # its data_dir holds checkpoints only
