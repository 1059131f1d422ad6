"""Authenticated key records end to end: a real server (app wiring, TLS) on a filesystem or SQLite
data directory, records edited on disk while it is stopped, then a restart.

Every edited record's key is refused with 500 ``integrity_error`` (read, encrypt, rotate, by id
and by name), every other key keeps working, listings report the key as unreadable, and the
start-up check writes exactly one ``store.integrity`` record naming the key and what failed,
never the record's contents. Also: a data directory written before records carried a MAC is
migrated once (``store.migrated``, then the marker), stripping MACs afterwards is refused rather
than migrated again, and a migration killed at any step finishes at the next start.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from live import LiveServer

from ferrohsm.app import CHECK_VALUE, ensure_private_dir
from ferrohsm.audit.chain import AuditEvent
from ferrohsm.audit.filesink import FileSink
from ferrohsm.config import Secrets
from ferrohsm.crypto.recordmac import RecordMac
from ferrohsm.crypto.seal import Sealer
from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.ids import uuid7
from ferrohsm.domain.model import SYSTEM_CONTEXT, Key, key_to_record
from ferrohsm.store.filesystem import FilesystemStore
from ferrohsm.store.keystore import KeyStore
from ferrohsm.store.records import FORMAT_META, RecordFormat, has_mac
from ferrohsm.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
STORES = ["filesystem", "sqlite"]
CONFIG = """
[policy.tags.pci]
approvals_required = 2
approval_actions = ["rotate", "unwrap"]
approval_ttl_seconds = 3600
"""
Record = dict[str, Any]


def B(data: bytes) -> str:  # noqa: N802  one letter, like b"": a base64 literal in bodies
    return base64.b64encode(data).decode()


def canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class Records:
    """A stopped server's stored key records and meta blobs, read and written behind its back."""

    def __init__(self, data: Path, kind: str) -> None:
        self.data, self.kind = data, kind

    def _sql(self, statement: str, *args: Any) -> list[Any]:
        conn = sqlite3.connect(self.data / "keys.sqlite3", isolation_level=None)
        try:
            return conn.execute(statement, args).fetchall()
        finally:
            conn.close()

    def read(self, key_id: str) -> bytes:
        if self.kind == "filesystem":
            return (self.data / "keys" / f"{key_id}.json").read_bytes()
        return str(self._sql("SELECT record FROM keys WHERE id = ?", key_id)[0][0]).encode()

    def write(self, key_id: str, data: bytes) -> None:
        if self.kind == "filesystem":
            path = self.data / "keys" / f"{key_id}.json"
            path.with_name("edited").write_bytes(data)
            os.replace(path.with_name("edited"), path)
        else:
            self._sql("UPDATE keys SET record = ? WHERE id = ?", data.decode(), key_id)

    def ids(self) -> list[str]:
        if self.kind == "filesystem":
            return sorted(p.stem for p in (self.data / "keys").glob("*.json"))
        return [row[0] for row in self._sql("SELECT id FROM keys ORDER BY id")]

    def delete_meta(self, name: str) -> None:
        if self.kind == "filesystem":
            (self.data / "meta" / name).unlink()
        else:
            self._sql("DELETE FROM meta WHERE name = ?", name)

    def strip_mac(self, key_id: str) -> None:
        """Write the record back as the codec before MACs wrote it: the bare canonical record."""
        self.write(key_id, canonical(json.loads(self.read(key_id))["record"]))


def open_store(data: Path, kind: str, master: bytes) -> KeyStore:
    mac = RecordMac.derive(master)
    return FilesystemStore(data, mac) if kind == "filesystem" else SQLiteStore(
        data / "keys.sqlite3", mac)


def audit(srv: LiveServer, action: str) -> list[dict[str, Any]]:
    return [r for r in srv.rt.audit.read(0, 100_000) if r["action"] == action]


def create(srv: LiveServer, name: str | None = None, tags: tuple[str, ...] = ()) -> str:
    body: dict[str, Any] = {"algorithm": "aes-256-gcm", "usage": "encrypt", "tags": list(tags)}
    if name is not None:
        body["name"] = name
    status, _, key = srv.call("POST", "/v1/keys", body)
    assert status == 201, key
    return str(key["id"])


def encrypt(srv: LiveServer, ref: str) -> tuple[int, Any]:
    status, _, reply = srv.call("POST", f"/v1/keys/{ref}/encrypt", {"plaintext": B(b"p")},
                                role="service")
    return status, reply


# ---- one victim per edit, all edited while the server is stopped ----------------------------

def edit_fields(change: Callable[[Record], None]) -> Callable[[Records, str, str], None]:
    """Change fields of the record and write it back canonically with its MAC untouched: the
    most careful an editor without the master key can be."""
    def apply(records: Records, victim: str, other: str) -> None:
        envelope = json.loads(records.read(victim))
        change(envelope["record"])
        records.write(victim, canonical(envelope))
    return apply


def swap_sealed_from_other(records: Records, victim: str, other: str) -> None:
    sealed = json.loads(records.read(other))["record"]["versions"][0]["sealed"]
    edit_fields(lambda r: r["versions"][0].update(sealed=sealed))(records, victim, other)


def copy_mac_from_other(records: Records, victim: str, other: str) -> None:
    envelope = json.loads(records.read(victim))
    envelope["mac"] = json.loads(records.read(other))["mac"]
    records.write(victim, canonical(envelope))


def remove_mac(records: Records, victim: str, other: str) -> None:
    records.strip_mac(victim)


def copy_record_from_other(records: Records, victim: str, other: str) -> None:
    records.write(victim, records.read(other))


def revoked(srv: LiveServer) -> str:
    key = create(srv)
    assert srv.call("POST", f"/v1/keys/{key}/revoke", {"reason": "retired"})[0] == 200
    return key


def scheduled(srv: LiveServer) -> str:
    key = create(srv)
    assert srv.call("POST", f"/v1/keys/{key}/destroy")[0] == 200
    return key


@dataclass(frozen=True)
class Case:
    setup: Callable[[LiveServer], str]  # makes the victim, returns its id
    edit: Callable[[Records, str, str], None]  # (records, victim, other key)
    problem: str  # what the start-up record and the error say failed
    planted: str = ""  # a value the edit wrote, which no message may repeat


CASES: dict[str, Case] = {
    "state-revoked-to-active": Case(revoked, edit_fields(lambda r: r.update(state="active")),
                                    "mac_mismatch"),
    "tag-pci-removed": Case(lambda s: create(s, tags=("pci", "prod")),
                            edit_fields(lambda r: r.update(tags=["prod"])), "mac_mismatch"),
    "usage": Case(create, edit_fields(lambda r: r.update(usage="wrap")), "mac_mismatch"),
    "algorithm": Case(create, edit_fields(lambda r: r.update(algorithm="ec-p256")),
                      "mac_mismatch"),
    "version-state": Case(create, edit_fields(lambda r: r["versions"][0].update(
        state="archived")), "mac_mismatch"),
    "destroy-after": Case(scheduled, edit_fields(lambda r: r.update(
        destroy_after="2100-01-01T00:00:00.000000Z")), "mac_mismatch", "2100-01-01"),
    "history": Case(create, edit_fields(lambda r: r["history"][0].update(actor="mallory-xyz")),
                    "mac_mismatch", "mallory-xyz"),
    "revision": Case(create, edit_fields(lambda r: r.update(revision=r["revision"] + 7)),
                     "mac_mismatch"),
    "description": Case(create, edit_fields(lambda r: r.update(description="planted-text-q7")),
                        "mac_mismatch", "planted-text-q7"),
    "name": Case(lambda s: create(s, name="named-victim"),
                 edit_fields(lambda r: r.update(name="renamed-by-hand")), "mac_mismatch",
                 "renamed-by-hand"),
    "audit-binding": Case(create, edit_fields(lambda r: r.update(audit_seq=12)), "mac_mismatch"),
    "sealed-blob-of-another-key": Case(create, swap_sealed_from_other, "mac_mismatch"),
    "mac-removed": Case(create, remove_mac, "mac_missing"),
    "mac-of-another-record": Case(create, copy_mac_from_other, "mac_mismatch"),
    "record-of-another-key": Case(create, copy_record_from_other, "wrong_key"),
}


@dataclass
class Tampered:
    srv: LiveServer
    records: Records
    victims: dict[str, str]  # case -> key id
    other: str


@pytest.fixture(scope="module", params=STORES)
def tampered(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tampered]:
    kind = str(request.param)
    tmp = tmp_path_factory.mktemp(f"tampered-{kind}")
    first = LiveServer(tmp, key_store=kind, config_text=CONFIG)
    try:
        other = create(first, name="bystander")
        victims = {name: case.setup(first) for name, case in CASES.items()}
    finally:
        first.close()
    records = Records(tmp / "data", kind)
    for name, case in CASES.items():
        case.edit(records, victims[name], other)
    second = LiveServer(tmp, key_store=kind, config_text=CONFIG, secrets_=first.secrets)
    yield Tampered(second, records, victims, other)
    second.close()


def assert_integrity_error(status: int, reply: Any, victim: str, planted: str) -> None:
    assert status == 500 and reply["error"]["code"] == "integrity_error", reply
    message = reply["error"]["message"]
    assert victim in message and "integrity" in message
    assert not planted or planted not in message


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_edited_record_is_refused_after_a_restart(tampered: Tampered, case: str) -> None:
    srv, victim, planted = tampered.srv, tampered.victims[case], CASES[case].planted
    calls: list[tuple[str, str, Any, str]] = [
        ("GET", f"/v1/keys/{victim}", None, "administrator"),
        ("POST", f"/v1/keys/{victim}/rotate", {}, "administrator"),
        ("POST", f"/v1/keys/{victim}/encrypt", {"plaintext": B(b"p")}, "service")]
    for method, path, body, role in calls:
        status, _, reply = srv.call(method, path, body, role=role)
        assert_integrity_error(status, reply, victim, planted)
    if case == "name":
        status, _, reply = srv.call("GET", "/v1/keys/named-victim")
        assert_integrity_error(status, reply, victim, planted)


@pytest.mark.parametrize("case", sorted(CASES))
def test_exactly_one_start_up_record_names_the_key(tampered: Tampered, case: str) -> None:
    victim, expected = tampered.victims[case], CASES[case]
    found = [r for r in audit(tampered.srv, "store.integrity") if r["key_id"] == victim]
    assert len(found) == 1, found
    record = found[0]
    assert record["outcome"] == "error" and record["actor"] == "system"
    assert record["details"] == {"check": "key_record", "problem": expected.problem}
    assert victim in record["message"]
    stored = json.loads(tampered.records.read(victim))
    fields = stored.get("record", stored)  # "mac-removed" left the bare record
    contents = [fields["versions"][0]["sealed"][:16], stored.get("mac", "")[:16],
                expected.planted]
    text = json.dumps(record)  # nothing of the stored record reaches the audit log
    assert not [c for c in contents if c and c in text]


def test_the_refusals_at_request_time_are_audited(tampered: Tampered) -> None:
    srv, victim = tampered.srv, tampered.victims["state-revoked-to-active"]
    before = len(audit(srv, "crypto.encrypt"))
    assert encrypt(srv, victim)[0] == 500
    refusals = audit(srv, "crypto.encrypt")[before:]
    assert [(r["outcome"], victim in r["message"]) for r in refusals] == [("error", True)]
    assert refusals[0]["key_id"] == victim  # "who used key X" finds the refusal too


def test_other_keys_keep_working(tampered: Tampered) -> None:
    srv = tampered.srv
    status, reply = encrypt(srv, tampered.other)
    assert status == 200, reply
    status, _, plain = srv.call("POST", "/v1/keys/bystander/decrypt",
                                {"ciphertext": reply["ciphertext"]}, role="service")
    assert status == 200 and plain["plaintext"] == B(b"p")
    assert srv.call("POST", "/v1/keys/bystander/rotate", {})[0] == 200
    assert create(srv, name="after-restart")


def test_the_listing_reports_bad_records_and_lists_the_rest(tampered: Tampered) -> None:
    status, _, page = tampered.srv.call("GET", "/v1/keys?limit=1000")
    assert status == 200
    listed = {k["id"] for k in page["keys"]}
    assert tampered.other in listed and not listed & set(tampered.victims.values())
    assert sorted(page["unreadable"]) == sorted(tampered.victims.values())
    health = tampered.srv.call("GET", "/healthz", role="auditor")[2]
    assert health["key_records"]["failed_at_start"] == len(CASES)


# ---- migration of a data directory written before records carried a MAC --------------------

def old_data_dir(tmp: Path, kind: str, secrets: Secrets, count: int = 4) -> list[Key]:
    """What an older FerroHSM left: records without a MAC (nor the audit binding fields), the
    master-key check value, no format marker, and an audit log (with its checkpoint) that records
    each key's creation but no store.migrated."""
    data = ensure_private_dir(tmp / "data")
    sealer = Sealer(secrets.master_key)
    now = datetime.now(UTC)
    keys = []
    for n in range(count):
        key_id = uuid7()
        sealed = sealer.seal(os.urandom(32), key_id=key_id, version=1, algorithm="aes-256-gcm")
        keys.append(lc.new_key(key_id=key_id, name=f"old-{n}", description="from before",
                               algorithm="aes-256-gcm", usage="encrypt",
                               tags=("pci",) if n == 0 else (), sealed=sealed, now=now,
                               actor="alice"))
    store = open_store(data, kind, secrets.master_key)
    try:
        store.put_meta(CHECK_VALUE, sealer.make_check_value())
        store.bulk_create(keys)
        stored = [store.get(key.id) for key in keys]
    finally:
        store.close()
    records = Records(data, kind)
    for key in stored:
        old = key_to_record(key)
        del old["audit_seq"], old["audit_hash"]
        records.write(key.id, canonical(old))
    old_audit_log(data / "audit", secrets, stored)
    return stored


def old_audit_log(directory: Path, secrets: Secrets, keys: list[Key]) -> None:
    sink = FileSink(directory, secrets.audit_hmac_key)
    try:
        for key in keys:
            sink.append(AuditEvent.from_context(SYSTEM_CONTEXT, "key.create", "success",
                                                "created aes-256-gcm key for encrypt",
                                                key_id=key.id, key_version=1))
    finally:
        sink.close()  # its checkpoint, as a clean shutdown leaves


def new_secrets() -> Secrets:
    return Secrets(os.urandom(32), os.urandom(32), os.urandom(32))


def assert_migrated(srv: LiveServer, keys: list[Key], records: Records) -> None:
    """Every record carries a MAC, the marker says so, and every key works as before."""
    migrated = audit(srv, "store.migrated")
    assert len(migrated) == 1, migrated
    assert migrated[0]["details"]["records"] == len(keys)
    assert srv.rt.store.record_format() is RecordFormat.AUTHENTICATED
    assert all(has_mac(records.read(key.id)) for key in keys)
    assert audit(srv, "store.integrity") == []
    bound = [r["key_id"] for r in audit(srv, "store.bound") if r["outcome"] == "success"]
    assert sorted(bound) == sorted(key.id for key in keys)  # each bound to the log once
    for key in keys:  # the binding is the one change start-up made
        assert srv.call("GET", f"/v1/keys/{key.id}")[2]["revision"] == key.revision + 1
        assert encrypt(srv, key.id)[0] == 200
    status, _, parked = srv.call("POST", f"/v1/keys/{keys[0].id}/rotate", {})
    assert status == 202, parked  # its pci tag still calls for dual control


@pytest.mark.parametrize("kind", STORES)
def test_an_old_data_dir_is_migrated_once(tmp_path: Path, kind: str) -> None:
    secrets = new_secrets()
    keys = old_data_dir(tmp_path, kind, secrets)
    records = Records(tmp_path / "data", kind)
    srv = LiveServer(tmp_path, key_store=kind, config_text=CONFIG, secrets_=secrets)
    try:
        assert_migrated(srv, keys, records)
        migrated = audit(srv, "store.migrated")[0]
        assert migrated["details"] == {"format": 2, "records": len(keys), "rewritten": len(keys)}
        assert srv.call("GET", "/healthz", role="auditor")[2]["key_records"]["migrated_at_start"] == 4
    finally:
        srv.close()
    again = LiveServer(tmp_path, key_store=kind, config_text=CONFIG, secrets_=secrets)
    try:
        assert_migrated(again, keys, records)  # still the one store.migrated
    finally:
        again.close()


@pytest.mark.parametrize("kind", STORES)
def test_a_mac_stripped_after_the_migration_is_refused_not_migrated(tmp_path: Path,
                                                                   kind: str) -> None:
    secrets = new_secrets()
    keys = old_data_dir(tmp_path, kind, secrets)
    LiveServer(tmp_path, key_store=kind, secrets_=secrets).close()  # migrates
    records = Records(tmp_path / "data", kind)
    records.strip_mac(keys[1].id)
    srv = LiveServer(tmp_path, key_store=kind, secrets_=secrets)
    try:
        status, reply = encrypt(srv, keys[1].id)
        assert_integrity_error(status, reply, keys[1].id, "")
        assert encrypt(srv, keys[2].id)[0] == 200
        found = audit(srv, "store.integrity")
        assert [(r["key_id"], r["details"]["problem"]) for r in found] == [
            (keys[1].id, "mac_missing")]
        assert len(audit(srv, "store.migrated")) == 1
    finally:
        srv.close()


@pytest.mark.parametrize("kind", STORES)
def test_stripping_every_mac_and_the_marker_does_not_migrate_again(tmp_path: Path,
                                                                  kind: str) -> None:
    """The audit log remembers the migration: a store made to look old is refused."""
    secrets = new_secrets()
    keys = old_data_dir(tmp_path, kind, secrets)
    LiveServer(tmp_path, key_store=kind, secrets_=secrets).close()  # migrates
    records = Records(tmp_path / "data", kind)
    for key_id in records.ids():
        records.strip_mac(key_id)
    records.delete_meta(FORMAT_META)
    srv = LiveServer(tmp_path, key_store=kind, secrets_=secrets)
    try:
        for key in keys:
            assert_integrity_error(*encrypt(srv, key.id), key.id, "")
        found = audit(srv, "store.integrity")
        assert [r["details"]["check"] for r in found] == ["format_marker"] + ["key_record"] * 4
        assert "marker is missing" in found[0]["message"]
        assert sorted(r["key_id"] for r in found[1:]) == sorted(k.id for k in keys)
        assert len(audit(srv, "store.migrated")) == 1
        assert srv.rt.store.record_format() is RecordFormat.AUTHENTICATED
    finally:
        srv.close()


# ---- a migration killed at each step finishes at the next start ----------------------------

KILLER = """
import os, sys
from ferrohsm import app as wiring
from ferrohsm.config import Secrets, load_config
from ferrohsm.integrity import records as integrity
from ferrohsm.store.filesystem import FilesystemStore
from ferrohsm.store.keystore import KeyStore
from ferrohsm.store.records import RecordFormat
from ferrohsm.store.sqlite import SQLiteStore

stage, kind, data = sys.argv[1:4]
secrets = Secrets(*(bytes.fromhex(x) for x in sys.argv[4:7]))
store_class = FilesystemStore if kind == "filesystem" else SQLiteStore
rewrites = []
replace_record, set_format, record = (store_class._replace_record,
                                      KeyStore.set_record_format, integrity._record)

def killed():
    os._exit(9)  # no cleanup, no unlock, nothing flushed: as kill -9

def rewrite_then_die(self, *args):
    replace_record(self, *args)
    rewrites.append(1)
    if stage == "mid-rewrite" and len(rewrites) == 2:
        killed()

def set_format_then_die(self, state):
    if stage == "after-audit-record" and state is RecordFormat.AUTHENTICATED:
        killed()
    set_format(self, state)
    if stage == "after-migrating-marker" and state is RecordFormat.MIGRATING:
        killed()

def record_or_die(audit, action, *args, **kw):
    if stage == "before-audit-record" and action == integrity.MIGRATED:
        killed()
    record(audit, action, *args, **kw)

store_class._replace_record = rewrite_then_die
KeyStore.set_record_format = set_format_then_die
integrity._record = record_or_die
config = load_config(None, env={}, overrides={("storage", "key_store"): kind,
                                              ("storage", "data_dir"): data})
wiring.build_runtime(config, secrets)
sys.exit(0)
"""


@pytest.mark.parametrize(("kind", "stage"), [
    ("filesystem", "after-migrating-marker"), ("filesystem", "mid-rewrite"),
    ("filesystem", "before-audit-record"), ("filesystem", "after-audit-record"),
    ("sqlite", "mid-rewrite"),
])
def test_a_migration_killed_mid_way_finishes_at_the_next_start(tmp_path: Path, kind: str,
                                                               stage: str) -> None:
    secrets = new_secrets()
    keys = old_data_dir(tmp_path, kind, secrets)
    hexes = [s.hex() for s in (secrets.master_key, secrets.jwt_hs256_secret,
                               secrets.audit_hmac_key)]
    child = subprocess.run([sys.executable, "-c", KILLER, stage, kind, str(tmp_path / "data"),
                            *hexes], capture_output=True, text=True, timeout=120, check=False,
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.returncode == 9, child.stderr
    records = Records(tmp_path / "data", kind)
    with_mac = sum(has_mac(records.read(key.id)) for key in keys)
    assert with_mac == {"after-migrating-marker": 0, "mid-rewrite": 2}.get(stage, len(keys))
    srv = LiveServer(tmp_path, key_store=kind, config_text=CONFIG, secrets_=secrets)
    try:
        assert_migrated(srv, keys, records)
    finally:
        srv.close()
