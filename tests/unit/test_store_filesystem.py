"""FilesystemStore specifics: modes, the process lock, temp files, paths, symlinks, corruption,
tampering and the persisted index. The shared contract is in tests/conformance."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.errors import IntegrityError, NotFound, StoreError
from ferrohsm.domain.model import Key, KeyFilter, KeyState, key_from_record
from ferrohsm.store.filesystem import TMP_PREFIX, FilesystemStore
from ferrohsm.store.records import RecordCodec

MAC = RecordMac.derive(bytes(32))  # record MACs under a test master key
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SEALED = b"\x01sealed-bytes-never-shown\xff"
REPO = Path(__file__).resolve().parents[2]


def make_key(name: str | None = None, tags: tuple[str, ...] = ()) -> Key:
    return lc.new_key(key_id=str(uuid.uuid4()), name=name, description="", algorithm="aes-256-gcm",
                      usage="encrypt", tags=tags, sealed=SEALED, now=NOW, actor="alice")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data: Path) -> Iterator[FilesystemStore]:
    opened = FilesystemStore(data, MAC)
    yield opened
    opened.close()


def key_file(data: Path, key: Key) -> Path:
    return data / "keys" / f"{key.id}.json"


def rewrite(path: Path, change: dict[str, object], *, resign: bool = False) -> None:
    """Change a record out of band, via a new inode: as an attacker or a careless admin would
    (the MAC stays as it was), or with ``resign`` as another writer holding the master key
    would (a restore, say: the MAC is made afresh)."""
    stored = json.loads(path.read_bytes())
    stored["record"].update(change)
    fresh = path.with_name("edited")
    if resign:
        fresh.write_bytes(RecordCodec(MAC).encode(key_from_record(stored["record"])))
    else:
        fresh.write_text(json.dumps(stored, sort_keys=True, separators=(",", ":")))
    os.replace(fresh, path)


# ---- modes and ownership -------------------------------------------------------------------

def test_directories_0700_files_0600(store: FilesystemStore, data: Path) -> None:
    key = store.create(make_key("k"))
    store.put_meta("check-value", b"cv")
    store.close()
    for directory in (data, data / "keys", data / "meta"):
        assert mode(directory) == 0o700
    for file in (key_file(data, key), data / "meta" / "check-value", data / "LOCK",
                 data / "index.json"):
        assert mode(file) == 0o600, file


def test_a_loose_data_dir_is_tightened(data: Path) -> None:
    data.mkdir(mode=0o777)
    os.chmod(data, 0o777)  # noqa: S103  the loose mode the store must tighten
    FilesystemStore(data, MAC).close()
    assert mode(data) == 0o700


def test_a_symlinked_data_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(StoreError, match="symlink"):
        FilesystemStore(tmp_path / "link", MAC)


def test_a_symlinked_keys_dir_is_refused(data: Path, tmp_path: Path) -> None:
    data.mkdir(mode=0o700)
    (tmp_path / "elsewhere").mkdir()
    (data / "keys").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match="symlink"):
        FilesystemStore(data, MAC)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_a_data_dir_owned_by_someone_else_is_refused(data: Path) -> None:
    data.mkdir(mode=0o700)
    os.chown(data, 4242, -1)
    with pytest.raises(StoreError, match="uid 4242"):
        FilesystemStore(data, MAC)


# ---- one owner at a time -------------------------------------------------------------------

def _open_in_child(data: Path) -> subprocess.CompletedProcess[str]:
    code = ("import sys\nfrom ferrohsm.domain.errors import StoreError\n"
            "from ferrohsm.crypto.recordmac import RecordMac\n"
            "from ferrohsm.store.filesystem import FilesystemStore\n"
            "try:\n    FilesystemStore(sys.argv[1], RecordMac.derive(bytes(32))).close()\n"
            "except StoreError as exc:\n    print(exc)\n    sys.exit(3)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True,
                          check=False, text=True, timeout=60, cwd=REPO, env=env)


def test_a_second_process_is_locked_out(store: FilesystemStore, data: Path) -> None:
    child = _open_in_child(data)
    assert child.returncode == 3, child.stderr
    assert f"data directory {data} is in use by another process" in child.stdout
    store.close()
    assert _open_in_child(data).returncode == 0


def test_a_second_store_in_the_same_process_is_locked_out(store: FilesystemStore,
                                                          data: Path) -> None:
    with pytest.raises(StoreError, match="in use by another process"):
        FilesystemStore(data, MAC)


# ---- crash leftovers and failed writes -----------------------------------------------------

def test_stray_temp_files_are_removed_at_open(store: FilesystemStore, data: Path) -> None:
    key = store.create(make_key())
    store.close()
    strays = [data / "keys" / f"{TMP_PREFIX}1234", data / "meta" / f"{TMP_PREFIX}x",
              data / f"{TMP_PREFIX}index"]
    for stray in strays:
        stray.write_bytes(b"half a record")
    (data / "keys" / "README").write_text("not ours, left alone")
    again = FilesystemStore(data, MAC)
    try:
        assert not any(p.exists() for p in strays)
        assert (data / "keys" / "README").exists()
        assert again.get(key.id) == key and again.count() == 1
    finally:
        again.close()


def test_a_failed_write_leaves_no_temp_file(store: FilesystemStore, data: Path) -> None:
    key = store.create(make_key())
    store.fail_writes = True
    with pytest.raises(StoreError):
        store.update(lc.revoke(key, NOW, "alice"))
    assert [p.name for p in (data / "keys").iterdir()] == [f"{key.id}.json"]


# ---- paths and symlinks --------------------------------------------------------------------

@pytest.mark.parametrize("ref", ["../x", "../../etc/passwd", "/etc/passwd", "a\x00b", "",
                                 "01890a5d-ac96-774b-bcce-b302099a8057\n", ".", "..", "LOCK"])
def test_ids_that_are_not_uuids_never_become_paths(store: FilesystemStore, ref: str) -> None:
    with pytest.raises(NotFound):
        store.get(ref)
    with pytest.raises(NotFound):
        store.delete(ref)


def test_an_id_with_a_trailing_newline_cannot_be_created(store: FilesystemStore) -> None:
    with pytest.raises(ValueError):  # the model refuses it before any store sees it
        replace(make_key(), id=str(uuid.uuid4()) + "\n")
    with pytest.raises(NotFound):
        store.resolve(str(uuid.uuid4()) + "\n")


def test_a_symlink_in_place_of_a_key_file_is_not_followed(store: FilesystemStore, data: Path,
                                                          tmp_path: Path) -> None:
    key, other = store.create(make_key("victim")), store.create(make_key())
    decoy = tmp_path / "decoy.json"
    decoy.write_bytes(key_file(data, key).read_bytes())
    key_file(data, key).unlink()
    key_file(data, key).symlink_to(decoy)
    with pytest.raises(StoreError, match=f"key {key.id}: its file is a symlink"):
        store.get(key.id)
    assert store.get(other.id) == other
    store.close()
    again = FilesystemStore(data, MAC)
    try:
        with pytest.raises(StoreError, match="symlink"):
            again.get(key.id)
        assert again.get(other.id) == other
    finally:
        again.close()


# ---- corruption and tampering --------------------------------------------------------------

@pytest.mark.parametrize("garbage", [b"{not json", b"[]", b'{"id": 1}', b"\xff\xfe",
                                     b'{"nested":' * 5000])
def test_a_corrupted_key_file_names_the_key_and_spares_the_rest(
        store: FilesystemStore, data: Path, garbage: bytes) -> None:
    bad, good = store.create(make_key("bad", ("t",))), store.create(make_key("good"))
    key_file(data, bad).write_bytes(garbage)
    for attempt in range(2):
        with pytest.raises(IntegrityError, match="carries no MAC") as caught:
            store.get(bad.id)
        assert bad.id in str(caught.value)
        assert "nested" not in str(caught.value) and "not json" not in str(caught.value)
        assert store.get(good.id) == good and store.get_by_name("good") == good
        assert [k.id for k in store.list(KeyFilter(name_prefix="go")).keys] == [good.id]
        page = store.list(KeyFilter())
        assert [k.id for k in page.keys] == [good.id] and page.unreadable == (bad.id,)
        if attempt == 0:
            store.close()
            store = FilesystemStore(data, MAC)
    assert bad.id in store.describe()["unreadable_keys"]  # type: ignore[operator]  # a list of ids
    store.close()


def test_a_record_copied_over_another_key_is_refused(store: FilesystemStore, data: Path) -> None:
    a, b = store.create(make_key("a")), store.create(make_key("b"))
    key_file(data, a).write_bytes(key_file(data, b).read_bytes())
    with pytest.raises(IntegrityError, match="different key"):
        store.get(a.id)


def test_tampering_on_disk_is_seen_by_the_next_get(store: FilesystemStore, data: Path) -> None:
    key = store.create(make_key("watched"))
    assert store.get(key.id) == key  # cached now
    rewrite(key_file(data, key), {"state": "revoked"})
    with pytest.raises(IntegrityError, match="MAC does not match"):
        store.get(key.id)
    rewrite(key_file(data, key), {"state": "revoked", "description": "edited by hand"},
            resign=True)
    seen = store.get(key.id)
    assert seen.state is KeyState.REVOKED and seen.description == "edited by hand"
    assert store.count(KeyFilter(state=KeyState.REVOKED)) == 1  # the index followed
    with key_file(data, key).open("r+b") as f:  # in place, same inode, different size
        f.truncate(10)
    with pytest.raises(IntegrityError, match=key.id):
        store.get(key.id)


def test_a_deleted_key_file_is_an_error_not_a_silent_miss(store: FilesystemStore,
                                                          data: Path) -> None:
    key = store.create(make_key())
    key_file(data, key).unlink()
    with pytest.raises(StoreError, match="missing"):
        store.get(key.id)


# ---- the persisted index -------------------------------------------------------------------

def _populate(store: FilesystemStore) -> list[Key]:
    return [store.create(make_key(f"k{n}", ("even",) if n % 2 == 0 else ())) for n in range(6)]


def _assert_indexed(store: FilesystemStore, keys: list[Key]) -> None:
    assert store.count() == len(keys)
    assert [k.id for k in store.list(KeyFilter(tag="even")).keys] == sorted(
        k.id for k in keys if "even" in k.tags)
    assert store.get_by_name("k3") == keys[3]


def test_a_consistent_index_is_used_without_reading_key_files(
        store: FilesystemStore, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = _populate(store)
    store.close()

    def no_reads(self: FilesystemStore, key_id: str) -> None:
        raise AssertionError("read a key file although index.json was consistent")

    monkeypatch.setattr(FilesystemStore, "_read_key", no_reads)
    again = FilesystemStore(data, MAC)
    assert again.count() == len(keys) and again.count(KeyFilter(tag="even")) == 3
    again.close()


@pytest.mark.parametrize("damage", ["delete", "garbage", "wrong-format"])
def test_the_index_is_rebuilt_when_missing_or_unusable(store: FilesystemStore, data: Path,
                                                       damage: str) -> None:
    keys = _populate(store)
    store.close()
    index = data / "index.json"
    if damage == "delete":
        index.unlink()
    elif damage == "garbage":
        index.write_text("{]")
    else:
        index.write_text(json.dumps({"format": 99, "keys": []}))
    again = FilesystemStore(data, MAC)
    try:
        _assert_indexed(again, keys)
        assert json.loads(index.read_text())["format"] == 1  # rewritten
    finally:
        again.close()


def test_a_stale_index_is_corrected_from_the_files(store: FilesystemStore, data: Path) -> None:
    keys = _populate(store)
    store.close()
    saved = (data / "index.json").read_bytes()
    again = FilesystemStore(data, MAC)  # writes after the last save: the index goes stale
    extra = again.create(make_key("extra", ("even",)))
    again.update(lc.revoke(again.get(keys[0].id), NOW, "alice"))
    again.close()
    (data / "index.json").write_bytes(saved)  # as if we crashed before close()
    rewrite(key_file(data, keys[1]), {"tags": ["even"]}, resign=True)  # and a restored file
    third = FilesystemStore(data, MAC)
    try:
        assert third.count() == len(keys) + 1
        assert [k.id for k in third.list(KeyFilter(state=KeyState.REVOKED)).keys] == [keys[0].id]
        assert third.count(KeyFilter(tag="even")) == 5 and third.get_by_name("extra") == extra
    finally:
        third.close()


def test_an_index_entry_without_a_file_is_dropped(store: FilesystemStore, data: Path) -> None:
    keys = _populate(store)
    store.close()
    key_file(data, keys[0]).unlink()
    again = FilesystemStore(data, MAC)
    try:
        assert again.count() == len(keys) - 1
        with pytest.raises(NotFound):
            again.get_by_name("k0")
    finally:
        again.close()


def test_the_closed_store_refuses_work(store: FilesystemStore) -> None:
    key = store.create(make_key())
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get(key.id)
    with pytest.raises(StoreError, match="closed"):
        store.create(make_key())
