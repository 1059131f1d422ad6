"""One contract for every AuditSink: run against FileSink, SQLiteSink and PostgresSink alike
(PostgreSQL: one real server for the session, tests/pgserver.py, a fresh database per test; the
offline verifier checks an export of the table, what ``ferrohsm audit export`` writes).

A sink is done when it passes this suite: records are durable before append returns, a ticket
(``append(event, durable=False)``) counts as durable only once its record is flushed and fails
exactly when its record was lost, the chain continues across restarts and under 16 concurrent
writers, every kind of tampering is named by the offline verifier, failures fail closed without
breaking the chain, and a log shorter than its last signed checkpoint refuses to open.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ferrohsm.audit.chain import AuditEvent, record_hash, seal_record_line, stored_seq
from ferrohsm.audit.groupcommit import GroupCommit
from ferrohsm.audit.pgsink import PostgresSink, stored_lines
from ferrohsm.audit.sinks import AuditSink, FileSink, SQLiteSink, Ticket
from ferrohsm.audit.verify import VerifyResult, load_checkpoint, verify_paths
from ferrohsm.domain.errors import AuditUnavailable, ConfigError
from ferrohsm.integrity.changelog import read_changes

KEY = hashlib.sha256(b"conformance audit key").digest()
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # tests/pgserver.py, beside the test folders
import pgserver  # noqa: E402  # after its folder is on the path


def event(n: int = 0, **kw: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "actor": "alice", "role": "operator", "action": "key.encrypt", "outcome": "success",
        "message": f"event {n}", "key_id": "6f1c0000-0000-4000-8000-000000000001",
        "key_version": 1, "request_id": f"req-{n}", "source_ip": "10.0.0.7",
        "details": {"n": n}}
    fields.update(kw)
    return AuditEvent(**fields)


class FailingFileSink(FileSink):
    fail = False

    def _fsync(self, fd: int) -> None:
        if self.fail:
            raise OSError(errno.EIO, "Input/output error")
        super()._fsync(fd)


class FailingSQLiteSink(SQLiteSink):
    fail = False

    def _commit(self, db: sqlite3.Connection) -> None:
        if self.fail:
            raise sqlite3.OperationalError("disk I/O error")
        super()._commit(db)


class FailingPostgresSink(PostgresSink):
    fail = False

    def _commit(self, conn: Any) -> None:
        if self.fail:
            raise self._psycopg.OperationalError("could not write to the WAL")
        super()._commit(conn)


class Backend:
    """How to open, read raw lines of, and tamper with one kind of sink."""

    def __init__(self, kind: str, root: Path, dsn: str = "") -> None:
        self.kind, self.root, self.dsn = kind, root, dsn
        self.dir = root / "audit"
        self.log_path = str(self.dir if kind == "file" else self.dir / "audit.db")
        if kind == "postgres":  # what the offline verifier gets: an export of the table
            self.log_path = str(root / "export.jsonl")

    def open(self, failing: bool = False, key: bytes = KEY, **kw: Any) -> Any:
        if self.kind == "file":
            return (FailingFileSink if failing else FileSink)(self.log_path, key, **kw)
        if self.kind == "postgres":
            return (FailingPostgresSink if failing else PostgresSink)(
                self.dsn, key, directory=str(self.dir), **kw)
        return (FailingSQLiteSink if failing else SQLiteSink)(self.log_path, key, **kw)

    def lines(self) -> list[bytes]:
        if self.kind == "file":
            return [line for seg in sorted(self.dir.glob("audit-*.jsonl"))
                    for line in seg.read_bytes().splitlines()]
        if self.kind == "postgres":
            return list(stored_lines(self.dsn))
        with self._db() as db:
            rows = db.execute("SELECT record FROM audit_log ORDER BY seq")
            return [row[0].encode() for row in rows]

    def write_lines(self, lines: list[bytes]) -> None:
        """Replace the whole log by ``lines`` (the sink must be closed)."""
        if self.kind == "file":
            for seg in self.dir.glob("audit-*.jsonl"):
                seg.unlink()
            (self.dir / "audit-000001.jsonl").write_bytes(b"".join(x + b"\n" for x in lines))
            return
        if self.kind == "postgres":
            import psycopg
            with psycopg.connect(self.dsn) as conn:  # commits on leaving
                conn.execute("DELETE FROM audit_log")
                for i, x in enumerate(lines, 1):
                    conn.execute("INSERT INTO audit_log VALUES (%s, '', '', '', NULL, '', '', %s)",
                                 (i, x.decode()))
            return
        with self._db() as db:
            db.execute("DELETE FROM audit_log")
            db.executemany("INSERT INTO audit_log VALUES (?, '', '', '', NULL, '', '', ?)",
                           [(i, x.decode()) for i, x in enumerate(lines, 1)])

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.log_path)
        try:
            with db:  # commit
                yield db
        finally:
            db.close()

    def verify(self, key: bytes = KEY, **kw: Any) -> VerifyResult:
        if self.kind == "postgres":  # `ferrohsm audit export` writes exactly these lines
            Path(self.log_path).write_bytes(b"".join(x + b"\n" for x in self.lines()))
        return verify_paths([self.log_path], key, **kw)

    @property
    def checkpoints(self) -> str:
        return str(self.dir / "checkpoints.jsonl")


@pytest.fixture(scope="session")
def postgres() -> Iterator[pgserver.PostgresServer]:
    """One real PostgreSQL server for the session (each test gets a fresh database)."""
    pgserver.skip_unless_available()
    with pgserver.running() as server:
        yield server


@pytest.fixture(params=["file", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "postgres":
        server: pgserver.PostgresServer = request.getfixturevalue("postgres")
        return Backend("postgres", tmp_path, server.new_database())
    return Backend(request.param, tmp_path)


@pytest.fixture
def sink(backend: Backend) -> Iterator[Any]:
    opened = backend.open()
    yield opened
    opened.close()


def fill(sink: AuditSink, count: int) -> list[dict[str, Any]]:
    return [sink.append(event(n)) for n in range(count)]


def kind_of(result: VerifyResult) -> tuple[str, int] | None:
    return None if result.problem is None else (result.problem["kind"], result.problem["seq"])


# ---- basics ------------------------------------------------------------------------------------

def test_append_read_head(sink: Any, backend: Backend) -> None:
    assert sink.head()[0] == 1  # the genesis record names the log
    genesis = sink.read()[0]
    assert genesis["action"] == "audit.genesis" and genesis["prev_hash"] == "0" * 64
    records = fill(sink, 3)
    assert [r["seq"] for r in records] == [2, 3, 4]
    assert records[0]["prev_hash"] == genesis["hash"]
    assert sink.head() == (4, records[-1]["hash"])
    assert sink.read() == [genesis, *records]
    assert sink.read(after_seq=2, limit=1) == [records[1]]
    assert sink.read(after_seq=4) == []
    info = sink.describe()
    assert info["backend"] == backend.kind and info["healthy"] and info["head_seq"] == 4
    assert info["failures"] == 0 and info["log_id"] == genesis["details"]["log_id"]
    assert KEY.hex() not in json.dumps(info)


def test_record_carries_every_api_field(sink: Any) -> None:
    record = sink.append(event(1, correlation_id="corr-1", session="s1",
                               client_fingerprint="ab" * 32, trace_id="t" * 32))
    for name in ("id", "seq", "ts", "actor", "role", "action", "key_id", "key_version", "outcome",
                 "message", "request_id", "correlation_id", "session", "client_fingerprint",
                 "source_ip", "prev_hash", "hash", "hmac"):
        assert name in record
    assert record["ts"].endswith("Z") and len(record["ts"]) == 27


def test_chain_continues_across_reopen(backend: Backend) -> None:
    first = backend.open()
    fill(first, 3)
    head = first.head()
    first.close()
    with pytest.raises(AuditUnavailable):
        first.append(event())
    second = backend.open()
    assert second.head() == head
    assert second.append(event(9))["prev_hash"] == head[1]
    second.close()
    result = backend.verify()
    assert result.ok and result.records_checked == 5 and result.head_seq == 5


def test_sixteen_concurrent_writers_share_commits(sink: Any, backend: Backend) -> None:
    per_thread, threads = 25, 16
    barrier = threading.Barrier(threads)
    seen: list[int] = []

    def writer(n: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            seen.append(sink.append(event(i, actor=f"writer-{n}"))["seq"])

    pool = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    total = per_thread * threads + 1
    assert sorted(seen) == list(range(2, total + 1))
    assert [r["seq"] for r in sink.read(limit=1000)] == list(range(1, total + 1))
    assert sink.describe()["group_commits"] < total  # writers shared commits
    sink.close()
    assert backend.verify().ok


# ---- tampering ----------------------------------------------------------------------------------

def _modify(lines: list[bytes]) -> list[bytes]:
    lines[3] = lines[3].replace(b'"message":"event 2"', b'"message":"event X"')
    return lines


def _modify_and_rehash(lines: list[bytes]) -> list[bytes]:
    record = json.loads(_modify(lines)[3])
    body = json.dumps({k: v for k, v in record.items() if k not in ("hash", "hmac")},
                      sort_keys=True, separators=(",", ":")).encode()
    record["hash"] = record_hash(record["prev_hash"], body)
    lines[3] = json.dumps(record, separators=(",", ":")).encode()
    return lines


def _insert_forged(lines: list[bytes]) -> list[bytes]:
    previous = json.loads(lines[2])
    forged = seal_record_line(event(99, actor="mallory"), seq=4, prev_hash=previous["hash"],
                              ts=datetime.now(UTC), record_id="forged", hmac_key=b"k" * 32)[1]
    return [*lines[:3], forged, *lines[3:]]


TAMPERING: dict[str, tuple[Callable[[list[bytes]], list[bytes]], str, int]] = {
    "modify a field": (_modify, "modified", 4),
    "modify and recompute the hash": (_modify_and_rehash, "bad_hmac", 4),
    "delete a record": (lambda ls: ls[:3] + ls[4:], "deleted", 4),
    "delete three records": (lambda ls: ls[:3] + ls[6:], "deleted", 4),
    "reorder two": (lambda ls: [*ls[:3], ls[4], ls[3], *ls[5:]], "reordered", 4),
    "move one far": (lambda ls: ls[:3] + ls[4:7] + [ls[3]] + ls[7:], "reordered", 4),
    "insert a forged record": (_insert_forged, "inserted", 4),
    "duplicate a record": (lambda ls: [*ls[:4], ls[3], *ls[4:]], "inserted", 5),
    "garbage line": (lambda ls: [*ls[:3], b"not a record", *ls[3:]], "malformed", 4),
    "delete the start": (lambda ls: ls[2:], "deleted", 1),
    "empty the log": (lambda ls: [], "deleted", 1),
}


@pytest.mark.parametrize("name", list(TAMPERING))
def test_verifier_names_each_tampering(backend: Backend, name: str) -> None:
    opened = backend.open()
    fill(opened, 8)
    opened.close()
    assert backend.verify().ok
    change, kind, seq = TAMPERING[name]
    backend.write_lines(change(backend.lines()))
    result = backend.verify()
    assert not result.ok
    assert kind_of(result) == (kind, seq), result.problem


def test_wrong_key_is_bad_hmac(backend: Backend) -> None:
    fill(opened := backend.open(), 2)
    opened.close()
    assert kind_of(backend.verify(key=b"w" * 32)) == ("bad_hmac", 1)


def test_opening_with_another_hmac_key_names_the_likely_cause(backend: Backend) -> None:
    """A node or process given another audit HMAC key than the log's: refused at open, and
    the refusal says which setting to compare, not only ``bad_hmac``."""
    fill(opened := backend.open(), 2)
    opened.close()
    with pytest.raises(AuditUnavailable) as refused:
        backend.open(key=b"w" * 32)
    assert "bad_hmac: is FERROHSM_AUDIT_HMAC_KEY the one" in refused.value.message


def test_splice_from_another_log_is_inserted(backend: Backend, tmp_path: Path,
                                            request: pytest.FixtureRequest) -> None:
    dsn = request.getfixturevalue("postgres").new_database() if backend.dsn else ""
    other = Backend(backend.kind, tmp_path / "other", dsn)
    for b in (backend, other):
        fill(opened := b.open(), 5)
        opened.close()
    mine, theirs = backend.lines(), other.lines()
    backend.write_lines([*mine[:3], theirs[3], *mine[4:]])
    assert kind_of(backend.verify()) == ("inserted", 4)


def test_truncated_tail_is_caught_by_a_signed_checkpoint(backend: Backend) -> None:
    opened = backend.open()
    fill(opened, 6)
    checkpoint = opened.make_checkpoint()
    public_pem = opened.anchor.public_key_pem()
    opened.close()
    assert backend.verify(checkpoint=checkpoint, public_key_pem=public_pem).ok
    backend.write_lines(backend.lines()[:-2])
    assert backend.verify().ok  # a hash chain alone cannot see a cut tail...
    result = backend.verify(checkpoint=checkpoint, public_key_pem=public_pem)
    assert kind_of(result) == ("truncated", 7)  # ...the checkpoint can
    forged = dict(checkpoint, seq=5)
    assert kind_of(backend.verify(checkpoint=forged, public_key_pem=public_pem)) == \
        ("bad_checkpoint", 5)


# ---- fail closed ------------------------------------------------------------------------------

def test_failed_commit_fails_closed_and_keeps_the_chain(backend: Backend) -> None:
    opened = backend.open(failing=True)
    fill(opened, 3)
    head = opened.head()
    opened.fail = True
    with pytest.raises(AuditUnavailable):
        opened.append(event(50))
    assert opened.head() == head
    info = opened.describe()
    assert info["failures"] == 1 and not info["last_write_ok"]
    opened.fail = False
    if backend.kind == "file":  # a failed fsync may have lost pages: refuse until restart
        assert not opened.healthy()
        with pytest.raises(AuditUnavailable, match="restart"):
            opened.append(event(51))
    else:  # a rolled-back transaction is clean: the next append is attempted, and works
        assert opened.healthy()
        assert opened.append(event(51))["seq"] == head[0] + 1
        assert opened.describe()["last_write_ok"]
    opened.close()
    result = backend.verify()
    assert result.ok, result.problem
    assert all(b'"message":"event 50"' not in line for line in backend.lines())
    reopened = backend.open()
    assert reopened.healthy() and reopened.append(event(52))
    reopened.close()
    assert backend.verify().ok



def test_degraded_from_a_failed_commit_until_the_next_good_one(backend: Backend) -> None:
    """What /healthz and the ferrohsm_audit_healthy gauge report: the reason from the first
    failed write or flush, None again only after one succeeds (never, until a restart, for a
    failure the sink could not undo)."""
    opened = backend.open(failing=True)
    fill(opened, 2)
    assert opened.degraded() is None
    opened.fail = True
    with pytest.raises(AuditUnavailable):
        opened.append(event(60))
    reason = opened.degraded()
    assert reason is not None and "audit" in reason
    opened.fail = False
    if backend.kind == "file":  # a failed fsync: until restart
        assert "restart" in (opened.degraded() or "")
    else:
        assert opened.degraded() == reason  # still degraded: no good write yet
        opened.append(event(61))
        assert opened.degraded() is None
    opened.close()
    assert opened.degraded() == "the audit log is closed"


@pytest.mark.parametrize("interval", [0.1, 0.0], ids=["checkpoints", "no-checkpoints"])
def test_a_failed_write_is_probed_until_the_log_takes_records_again(
        backend: Backend, interval: float, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """/readyz reads degraded(): after a failed write it stayed "not ready" until a request
    came, and no request comes to a node a load balancer took out of rotation (an outside
    tester, after a database outage). The checkpoint thread now writes an ``audit.writable``
    record when the cause is gone, with time checkpoints or without. A probe that fails is
    neither logged nor counted (a red team: an error line and a failure a second). A file
    sink's failed fsync needs a restart: no probe."""
    import logging
    import time

    from ferrohsm.audit import checkpointer, sinkbase
    monkeypatch.setattr(sinkbase, "PROBE_EVERY", 0.2)
    monkeypatch.setattr(checkpointer, "MAX_TICK", 0.05)
    opened = backend.open(failing=True, checkpoint_interval=interval)
    fill(opened, 2)
    opened.fail = True
    with pytest.raises(AuditUnavailable):
        opened.append(event(70))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ferrohsm.audit"):
        time.sleep(0.6)  # probes meanwhile fail and change nothing
    assert opened.degraded() is not None and opened.describe()["failures"] == 1
    assert not [r for r in caplog.records if r.pathname.endswith("sinkbase.py")]
    opened.fail = False
    deadline = time.monotonic() + 5
    while opened.degraded() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    if backend.kind == "file":
        assert "restart" in (opened.degraded() or "")
    else:
        assert opened.degraded() is None
        last = opened.read(0, 100)[-1]
        assert last["action"] == "audit.writable" and last["details"]["failed_writes"] == 1
    opened.close()
    assert backend.verify().ok


# ---- tickets (the event-loop server: one write per turn, one flush per group of turns) ----------

def test_queued_records_are_durable_only_after_wait(sink: Any, backend: Backend) -> None:
    start = sink.head()
    first, second = sink.append(event(1), durable=False), sink.append(event(2), durable=False)
    assert isinstance(first, Ticket) and first.seq == second.seq == 0  # queued, not written
    assert not sink.is_durable(first)
    assert sink.head() == start and len(backend.lines()) == start[0]  # nothing written yet
    sink.write_queued()
    assert (first.seq, second.seq) == (start[0] + 1, start[0] + 2)
    if backend.kind == "file":  # written, not flushed
        assert not sink.is_durable(second) and sink.head() == start
    sink.wait(second)
    assert sink.is_durable(first) and sink.is_durable(second)
    assert sink.head()[0] == second.seq
    assert [r["message"] for r in sink.read(start[0])] == ["event 1", "event 2"]
    assert sink.describe()["group_commits"] == start[0] + 1  # genesis, then one group of two
    sink.close()
    assert backend.verify().ok


def test_wait_writes_a_ticket_still_queued(sink: Any) -> None:
    ticket = sink.append(event(1), durable=False)
    sink.wait(ticket)  # nobody called write_queued: wait does
    assert ticket.seq == sink.head()[0] and sink.is_durable(ticket)
    sink.wait(ticket)  # durable already: returns at once


def test_a_durable_append_leaves_the_queue_alone(sink: Any) -> None:
    ticket = sink.append(event(1), durable=False)
    record = sink.append(event(2))  # durable: sealed, stored and flushed before it returns
    assert sink.head()[0] == record["seq"] and ticket.seq == 0
    sink.write_queued()
    sink.write_queued()  # nothing left: a no-op
    assert ticket.seq == record["seq"] + 1
    sink.wait(ticket)
    assert [r["message"] for r in sink.read(record["seq"] - 1)] == ["event 2", "event 1"]


def test_the_queue_is_the_sinks_not_a_threads(sink: Any, backend: Backend) -> None:
    """Tickets are values: one taken in another thread is written by whoever writes next, and
    another thread's durable appends land between a queued record and its write."""
    mine = sink.append(event(1), durable=False)
    theirs: list[Any] = []
    other = threading.Thread(target=lambda: theirs.extend([sink.append(event(2)),
                                                           sink.append(event(3), durable=False)]))
    other.start()
    other.join()
    assert sink.read(sink.head()[0] - 1)[0]["message"] == "event 2"  # durable already
    sink.wait(theirs[1])  # writes both queued records, then flushes
    assert mine.seq == theirs[0]["seq"] + 1 and sink.is_durable(mine)
    assert sink.read(sink.head()[0] - 1)[0]["message"] == "event 3"
    sink.close()
    assert backend.verify().ok


def test_a_failed_flush_fails_every_ticket_it_should_have_covered(backend: Backend) -> None:
    opened = backend.open(failing=True)
    head = opened.head()
    tickets = [opened.append(event(n), durable=False) for n in range(3)]
    opened.fail = True
    with pytest.raises(AuditUnavailable):
        opened.wait(tickets[-1])
    for ticket in tickets:
        with pytest.raises(AuditUnavailable):
            opened.is_durable(ticket)
        with pytest.raises(AuditUnavailable):
            opened.wait(ticket)
    assert opened.head() == head
    opened.fail = False
    if backend.kind == "file":  # refused from now on, before any answer is computed
        with pytest.raises(AuditUnavailable, match="restart"):
            opened.append(event(9), durable=False)
    opened.close()
    assert backend.verify().ok
    assert all(b'"message":"event 0"' not in line for line in backend.lines())


def test_a_failed_write_fails_its_tickets_at_once(backend: Backend) -> None:
    """The write of a group fails and is cleanly undone (a full disk: the file sink truncates
    its bytes off; SQLite's COMMIT, which is its write, rolls back): write_queued does not
    raise, each ticket of the group says so at once, and the next group works. Its seqs are
    given out again, and the failed tickets stay failed."""
    opened = backend.open(failing=True)
    head = opened.head()
    failed = [opened.append(event(n), durable=False) for n in range(2)]
    with failing_write(opened):
        opened.write_queued()
    for ticket in failed:
        assert ticket.seq == 0
        with pytest.raises(AuditUnavailable):
            opened.is_durable(ticket)
    assert opened.head() == head and opened.healthy()
    fine = opened.append(event(5), durable=False)
    opened.write_queued()
    opened.wait(fine)
    assert fine.seq == head[0] + 1 and opened.is_durable(fine)
    with pytest.raises(AuditUnavailable):
        opened.wait(failed[0])
    opened.close()
    assert backend.verify().ok
    assert all(b'"message":"event 0"' not in line for line in backend.lines())


@contextlib.contextmanager
def failing_write(sink: Any) -> Iterator[None]:
    """The next group's write fails like a full disk (SQLite: its COMMIT)."""
    if isinstance(sink, FileSink):
        original = sink._write_all

        def full(fd: int, data: bytes) -> None:
            original(fd, data[: len(data) // 2])  # a torn half, then ENOSPC
            raise OSError(errno.ENOSPC, "No space left on device")

        sink._write_all = full  # type: ignore[method-assign]  # a fault, for this test only
        try:
            yield
        finally:
            del sink._write_all
    else:
        sink.fail = True
        try:
            yield
        finally:
            sink.fail = False


def test_written_records_count_only_once_durable(sink: Any, backend: Backend) -> None:
    """head, read and checkpoints never show a record before it is durable (FileSink splits
    the write from the flush; SQLite's COMMIT does both in write_queued)."""
    start = sink.head()
    tickets = [sink.append(event(1), durable=False), sink.append(event(2), durable=False)]
    sink.write_queued()
    assert tickets[-1].seq == start[0] + 2
    if backend.kind == "file":
        assert sink.head() == start and sink.read(start[0]) == []
        assert sink.make_checkpoint()["seq"] == start[0]
    else:
        assert sink.is_durable(tickets[-1])
    sink.wait(tickets[-1])
    assert sink.head()[0] == tickets[-1].seq
    assert [r["message"] for r in sink.read(start[0])] == ["event 1", "event 2"]
    assert sink.append(event(3))["seq"] == tickets[-1].seq + 1
    sink.close()
    assert backend.verify().ok


def test_close_flushes_written_and_queued_records(backend: Backend) -> None:
    opened = backend.open()
    written = opened.append(event(1), durable=False)
    opened.write_queued()
    queued = opened.append(event(2), durable=False)
    opened.close()
    assert opened.is_durable(written) and opened.is_durable(queued)
    with pytest.raises(AuditUnavailable, match="closed"):
        opened.append(event(3), durable=False)
    reopened = backend.open()
    assert reopened.head()[0] == queued.seq == written.seq + 1
    assert [r["message"] for r in reopened.read(written.seq - 1)] == ["event 1", "event 2"]
    reopened.close()
    assert backend.verify().ok


def test_a_durable_append_covers_earlier_written_records(sink: Any) -> None:
    ticket = sink.append(event(1), durable=False)
    sink.write_queued()
    record = sink.append(event(2))  # its flush covers the written record before it
    assert record["seq"] == ticket.seq + 1 and sink.head()[0] == ticket.seq + 1
    assert sink.is_durable(ticket)


def test_failed_flush_loses_only_unacknowledged_records(backend: Backend) -> None:
    opened = backend.open(failing=True)
    fill(opened, 2)
    head = opened.head()
    ticket = opened.append(event(7), durable=False)
    opened.fail = True
    opened.write_queued()
    if backend.kind != "file":  # nothing to split: the failure surfaces at write time
        with pytest.raises(AuditUnavailable):
            opened.is_durable(ticket)
        opened.fail = False
        opened.close()
        assert backend.verify().ok
        return
    with pytest.raises(AuditUnavailable):
        opened.wait(ticket)
    assert opened.head() == head and not opened.healthy()
    opened.fail = False
    opened.close()
    assert backend.verify().ok
    assert all(b'"message":"event 7"' not in line for line in backend.lines())


def test_written_records_survive_a_segment_rotation(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "audit", KEY, segment_max_bytes=4096)
    tickets = []
    for n in range(40):
        tickets.append(sink.append(event(n, message="x" * 300), durable=False))
        sink.write_queued()
    sink.wait(tickets[-1])
    assert sink.head()[0] == tickets[-1].seq
    assert all(sink.is_durable(ticket) for ticket in tickets)
    assert len(list((tmp_path / "audit").glob("audit-*.jsonl"))) > 2
    sink.close()
    assert verify_paths([str(tmp_path / "audit")], KEY).ok



def test_wait_does_not_acknowledge_records_a_failed_writer_cut_off(tmp_path: Path) -> None:
    """The flush of written records succeeds, then (before wait() takes the lock again) another
    writer's fsync fails and its undo truncates them: wait() must refuse, not acknowledge."""
    flushed, go_on = threading.Event(), threading.Event()

    class Racing(FailingFileSink):
        def _fsync(self, fd: int) -> None:
            if threading.current_thread().name == "committer":
                super()._fsync(fd)
                flushed.set()
                go_on.wait(5)
                return
            super()._fsync(fd)

    sink = Racing(tmp_path / "audit", KEY)
    ticket = sink.append(event(1), durable=False)
    sink.write_queued()
    outcome: list[str] = []

    def committer() -> None:
        try:
            sink.wait(ticket)
            outcome.append("acknowledged")
        except AuditUnavailable:
            outcome.append("refused")

    thread = threading.Thread(target=committer, name="committer")
    thread.start()
    assert flushed.wait(5)
    sink.fail = True
    with pytest.raises(AuditUnavailable):
        sink.append(event(2))
    go_on.set()
    thread.join(5)
    assert outcome == ["refused"] and not sink.healthy()
    with pytest.raises(AuditUnavailable):
        sink.is_durable(ticket)
    sink.close()


def test_failed_flush_at_rotation_stops_the_file_sink(tmp_path: Path) -> None:
    sink = FailingFileSink(tmp_path / "audit", KEY, segment_max_bytes=4096)
    tickets: list[Ticket] = []
    while len(list((tmp_path / "audit").glob("audit-*.jsonl"))) == 1 and len(tickets) < 200:
        tickets.append(sink.append(event(len(tickets), message="x" * 300), durable=False))
        if sink._size + 800 >= 4096:  # the next write rotates: its fsync of the old one fails
            sink.fail = True
        sink.write_queued()
        if tickets[-1].error is not None:
            break
    assert sink.fail and not sink.healthy()
    sink.fail = False
    for ticket in tickets[-2:]:  # the one written before, and the one whose write failed
        with pytest.raises(AuditUnavailable):
            sink.wait(ticket)
    sink.close()
    assert verify_paths([str(tmp_path / "audit")], KEY).ok


def test_wait_refuses_when_the_segment_was_replaced_after_the_write(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "audit", KEY)
    ticket = sink.append(event(1), durable=False)
    sink.write_queued()
    live = sorted((tmp_path / "audit").glob("audit-*.jsonl"))[-1]
    data = live.read_bytes()
    live.unlink()
    live.write_bytes(data)
    with pytest.raises(AuditUnavailable):
        sink.wait(ticket)
    assert not sink.healthy()
    sink.close()


CHILD = textwrap.dedent("""
    import base64, os, resource, signal, sys
    sys.path.insert(0, sys.argv[3])
    from ferrohsm.audit.chain import AuditEvent
    from ferrohsm.audit.sinks import FileSink, SQLiteSink
    from ferrohsm.domain.errors import AuditUnavailable
    key = base64.b64decode(os.environ["AUDIT_KEY"])
    kind, path = sys.argv[1], sys.argv[2]
    sink = FileSink(path, key) if kind == "file" else SQLiteSink(path, key)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    root = path if kind == "file" else os.path.dirname(path)
    biggest = max(os.path.getsize(os.path.join(root, n)) for n in os.listdir(root))
    limit = biggest + int(sys.argv[4])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    for n in range(2000):
        try:
            seq = sink.append(AuditEvent(actor="a", role="r", action="key.sign",
                                         outcome="success", message="x" * 300))["seq"]
        except AuditUnavailable:
            print("refused", flush=True)
            break
        print(seq, flush=True)
    sink.close()
""")


def test_file_size_limit_fails_closed(backend: Backend) -> None:
    """A real write error (EFBIG after a short write) in a child process with RLIMIT_FSIZE."""
    if backend.kind == "postgres":
        pytest.skip("the database server writes the files: a limit on this process is moot")
    backend.open().close()
    env = dict(os.environ, AUDIT_KEY=base64.b64encode(KEY).decode())
    margin = "6000" if backend.kind == "file" else "200000"  # SQLite's WAL grows by whole pages
    argv = [sys.executable, "-c", CHILD, backend.kind, backend.log_path, str(ROOT), margin]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                         check=True).stdout
    lines = out.split()
    assert lines[-1] == "refused" and len(lines) > 2
    acked = {int(x) for x in lines[:-1]}
    result = backend.verify()
    assert result.ok, result.problem
    reopened = backend.open()
    assert acked <= {r["seq"] for r in reopened.read(limit=5000)}
    reopened.close()


# ---- crash recovery and checkpoints -----------------------------------------------------------

def test_torn_last_line_is_recovered(tmp_path: Path) -> None:
    backend = Backend("file", tmp_path)
    fill(opened := backend.open(), 3)
    opened.close()
    segment = backend.dir / "audit-000001.jsonl"
    good_size = segment.stat().st_size
    torn = b'{"action":"key.sign","actor":"al'
    with open(segment, "ab") as f:
        f.write(torn)
    assert kind_of(backend.verify()) == ("torn_line", 5)
    reopened = backend.open()
    recovery = reopened.read(after_seq=4)[0]
    assert recovery["action"] == "audit.recovery"
    assert f"{len(torn)} bytes at offset {good_size}" in recovery["message"]
    reopened.append(event(7))
    reopened.close()
    result = backend.verify()
    assert result.ok and result.head_seq == 6
    assert any(f"torn audit record of {len(torn)} bytes" in note for note in result.notices)


def test_log_shorter_than_its_checkpoint_refuses_to_open(backend: Backend) -> None:
    fill(opened := backend.open(), 5)
    opened.make_checkpoint()
    opened.close()  # close also anchors the head
    last = load_checkpoint(backend.checkpoints)
    assert last["seq"] == 6
    backend.write_lines(backend.lines()[:-1])
    with pytest.raises(AuditUnavailable, match="shorter than its last signed checkpoint"):
        backend.open()


def test_rolled_back_log_refuses_to_open(backend: Backend, tmp_path: Path) -> None:
    fill(opened := backend.open(), 3)
    opened.close()
    saved = backend.lines()
    fill(opened := backend.open(), 3)
    opened.close()
    backend.write_lines(saved)  # an old copy put back: shorter than the newest checkpoint
    with pytest.raises(AuditUnavailable, match="truncated or rolled back"):
        backend.open()


def test_automatic_checkpoints(backend: Backend) -> None:
    opened = backend.open(anchor_every=10)
    fill(opened, 25)
    assert opened.describe()["last_checkpoint_seq"] == 20
    opened.close()
    cps = [json.loads(x) for x in Path(backend.checkpoints).read_text().splitlines()]
    assert [c["seq"] for c in cps] == [1, 10, 20, 26]  # at open (genesis), every 10, at close
    assert Path(backend.checkpoints).stat().st_mode & 0o777 == 0o600


def test_signing_key_file(backend: Backend, tmp_path: Path) -> None:
    key_file = tmp_path / "signing.key"
    key_file.write_bytes(hashlib.sha256(b"seed").digest())  # raw 32-byte Ed25519 seed
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        backend.open(signing_key_path=str(key_file))
    key_file.chmod(0o600)
    opened = backend.open(signing_key_path=str(key_file))
    checkpoint = opened.make_checkpoint()
    pem = opened.anchor.public_key_pem()
    opened.close()
    assert (tmp_path / "signing.pub.pem").read_bytes() == pem
    assert backend.verify(checkpoint=checkpoint, public_key_pem=pem).ok


# ---- group commit ----------------------------------------------------------------------------

def test_group_commit_orders_and_bounds_groups() -> None:
    groups: list[list[int]] = []
    gate = threading.Event()

    def flush(items: list[int]) -> list[int]:
        gate.wait(5)
        groups.append(items)
        return [i * 10 for i in items]

    commit: GroupCommit[int, int] = GroupCommit(flush, max_group=4)
    results: dict[int, int] = {}
    pool = [threading.Thread(target=lambda i=i: results.__setitem__(i, commit.submit(i)))
            for i in range(12)]
    for t in pool:
        t.start()
    gate.set()
    for t in pool:
        t.join()
    assert results == {i: i * 10 for i in range(12)}
    assert all(1 <= len(g) <= 4 for g in groups) and sum(map(len, groups)) == 12


def test_group_commit_failure_reaches_every_writer_of_the_group() -> None:
    def flush(items: list[int]) -> list[int]:
        raise OSError(errno.ENOSPC, "No space left on device")

    commit: GroupCommit[int, int] = GroupCommit(flush)
    with pytest.raises(AuditUnavailable):
        commit.submit(1)
    commit2: GroupCommit[int, int] = GroupCommit(lambda items: items)
    assert commit2.submit(7) == 7


# ---- backend specifics -------------------------------------------------------------------------

def test_file_segments_rotate_and_link(tmp_path: Path) -> None:
    backend = Backend("file", tmp_path)
    opened = backend.open(segment_max_bytes=4096)
    fill(opened, 30)
    assert len(opened.read(limit=100)) == 31 + len(list(backend.dir.glob("audit-*.jsonl"))) - 1
    opened.close()
    segments = sorted(backend.dir.glob("audit-*.jsonl"))
    assert len(segments) >= 4
    for seg in segments[1:]:
        assert json.loads(seg.read_bytes().splitlines()[0])["action"] == "audit.segment_start"
    assert backend.dir.stat().st_mode & 0o777 == 0o700
    assert all(seg.stat().st_mode & 0o777 == 0o600 for seg in segments)
    assert backend.verify().ok
    segments[1].rename(backend.dir / "keep")
    assert kind_of(backend.verify())[0] == "deleted"  # type: ignore[index]  # None fails the test too
    (backend.dir / "keep").rename(segments[1])
    segments[1].rename(backend.dir / "swap")
    segments[2].rename(segments[1])
    (backend.dir / "swap").rename(segments[2])
    assert kind_of(backend.verify())[0] == "reordered"  # type: ignore[index]  # None fails the test too


def test_file_recovers_from_a_crash_just_after_rotation(tmp_path: Path) -> None:
    backend = Backend("file", tmp_path)
    fill(opened := backend.open(), 3)
    opened.close()
    (backend.dir / "audit-000002.jsonl").write_bytes(b'{"action":"au')  # created, then torn
    reopened = backend.open()
    assert reopened.head()[0] == 6  # 1-4 before the crash, then segment_start and recovery
    first, recovery = reopened.read(after_seq=4)
    assert first["action"] == "audit.segment_start" and recovery["action"] == "audit.recovery"
    reopened.close()
    assert backend.verify().ok


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_file_live_segment_swapped_underneath_refuses(tmp_path: Path, how: str) -> None:
    backend = Backend("file", tmp_path)
    opened = backend.open()
    fill(opened, 2)
    segment = backend.dir / "audit-000001.jsonl"
    saved = segment.read_bytes()
    segment.unlink()
    if how == "replaced":
        segment.write_bytes(saved)
    with pytest.raises(AuditUnavailable, match="underneath"):
        opened.append(event(3))
    assert not opened.healthy()
    opened.close()


def test_two_writers_share_one_chain(backend: Backend) -> None:
    """Two sinks on one log (what two processes are): each batch follows the other's records,
    so the log stays one chain; tickets, rotation and checkpoints work across them."""
    kw: dict[str, Any] = {"segment_max_bytes": 4096} if backend.kind == "file" else {}
    first, second = backend.open(**kw), backend.open(**kw)
    assert second.head() == first.head()  # one genesis, not two
    acked = []
    for n in range(30):
        writer = (first, second)[n % 2]
        if n % 3:
            acked.append(writer.append(event(n, message="x" * 200))["seq"])
        else:
            ticket = writer.append(event(n, message="x" * 200), durable=False)
            writer.wait(ticket)
            acked.append(ticket.seq)
    assert acked == sorted(set(acked))  # increasing, none twice
    assert first.read(limit=1000) == second.read(limit=1000)  # either one reads it all
    assert first.catch_up() == second.catch_up() == second.head()
    first.make_checkpoint()
    second.close()
    first.close()
    result = backend.verify()
    assert result.ok, result.problem
    seqs = [json.loads(line)["seq"] for line in backend.lines()]
    assert seqs == list(range(1, len(seqs) + 1)) and set(acked) <= set(seqs)


def _cut_tail(backend: Backend, count: int) -> None:
    """Someone deletes the last ``count`` records while the writers run."""
    if backend.kind == "file":
        segment = sorted(backend.dir.glob("audit-*.jsonl"))[-1]
        lines = segment.read_bytes().splitlines(keepends=True)
        os.truncate(segment, sum(len(x) for x in lines[:-count]))
        return
    head = len(backend.lines())
    if backend.kind == "postgres":
        import psycopg
        with psycopg.connect(backend.dsn) as conn:
            conn.execute("DELETE FROM audit_log WHERE seq > %s", (head - count,))
        return
    with backend._db() as db:
        db.execute("DELETE FROM audit_log WHERE seq > ?", (head - count,))


def test_a_cut_of_another_writers_records_is_seen_by_a_writer_that_checkpointed(
        backend: Backend) -> None:
    """Two writers (nodes on one database, processes on one file): records only the first
    wrote are cut. The second, whose checkpoint tick adopted the whole head, fails closed
    instead of writing over the gap, and its checkpoints show the cut to the verifier."""
    first, second = backend.open(), backend.open()
    fill(second, 1)
    fill(first, 5)  # records the second never wrote
    second._interval_checkpoint()  # the checkpoint thread's tick
    checkpoint = load_checkpoint(backend.checkpoints)
    assert checkpoint["seq"] == first.head()[0]
    _cut_tail(backend, 3)
    with pytest.raises(AuditUnavailable, match=r"truncated or rolled back|modified underneath"):
        second.append(event(99))
    result = backend.verify(checkpoint=checkpoint,
                            public_key_pem=second.anchor.public_key_pem())
    assert kind_of(result) == ("truncated", checkpoint["seq"])
    for writer in (first, second):
        with contextlib.suppress(AuditUnavailable):
            writer.close()


def test_sqlite_prune_keeps_a_verifiable_log(tmp_path: Path) -> None:
    backend = Backend("sqlite", tmp_path)
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    opened = backend.open(retention_days=30, clock=lambda: now[0])
    for day in range(10):
        now[0] = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day * 10)
        fill(opened, 3)
    assert opened.prune(datetime(2026, 1, 1, tzinfo=UTC)) is None  # nothing old enough yet
    checkpoint = opened.prune(datetime(2026, 4, 1, tzinfo=UTC))
    assert checkpoint is not None and checkpoint["action"] == "audit.checkpoint"
    details = checkpoint["details"]
    assert details["first_pruned_seq"] == 1 and details["count"] == details["last_pruned_seq"]
    remaining = opened.read(limit=1000)
    assert remaining[0]["seq"] == details["last_pruned_seq"] + 1
    assert remaining[0]["prev_hash"] == details["last_pruned_hash"]
    now[0] = datetime(2026, 5, 1, tzinfo=UTC)
    fill(opened, 2)
    assert opened.prune(datetime(2026, 8, 1, tzinfo=UTC))["details"]["count"] > 0
    opened.close()
    result = backend.verify()
    assert result.ok, result.problem
    assert any("pruning" in note for note in result.notices)
    lines = backend.lines()
    backend.write_lines(lines[1:])  # someone deletes one more record: no checkpoint attests it
    assert kind_of(backend.verify()) == ("deleted", 1)


def test_sqlite_prune_goes_by_the_authenticated_time_not_the_column(tmp_path: Path) -> None:
    """Someone with the database file sets the ts column of fresh records back: the prune
    refuses (the time inside each record is under its MAC), rather than deleting them under a
    signed checkpoint that would make the deletion look lawful."""
    backend = Backend("sqlite", tmp_path)
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    opened = backend.open(retention_days=30, clock=lambda: now[0])
    fill(opened, 5)
    db = sqlite3.connect(backend.log_path)
    db.execute("UPDATE audit_log SET ts = '2000-01-01T00:00:00Z'")
    db.commit()
    db.close()
    with pytest.raises(AuditUnavailable, match="ts column"):
        opened.prune(datetime(2026, 1, 2, tzinfo=UTC))
    assert len(opened.read(limit=1000)) >= 5  # nothing deleted
    opened.close()


def test_sqlite_durable_settings(tmp_path: Path) -> None:
    backend = Backend("sqlite", tmp_path)
    opened = backend.open()
    db = opened._conn()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert Path(backend.log_path).stat().st_mode & 0o777 == 0o600
    opened.close()


# ---- start-up's walk along the stored chain (integrity/chainwalk.py) ---------------------------

def _read_changes(lines: list[bytes]) -> None:
    """What start-up reconciliation reads: the stored lines up to the head (the last line)."""
    head = stored_seq(lines[-1]) or 0
    read_changes([line + b"\n" for line in lines], KEY, head)


@pytest.mark.parametrize("name", [n for n in TAMPERING if n != "empty the log"])
def test_start_up_refuses_every_tampering_the_verifier_names(backend: Backend,
                                                             name: str) -> None:
    """A record moved, copied, cut, changed or missing anywhere in the log stops start-up, not
    only one reconciliation would parse: a copied intent would otherwise be settled again, and
    new records would be chained after a break no verifier accepts."""
    opened = backend.open()
    fill(opened, 8)
    opened.close()
    _read_changes(backend.lines())  # the untouched log: no refusal
    change = TAMPERING[name][0]
    with pytest.raises(AuditUnavailable, match="the audit log is broken at seq"):
        _read_changes(change(backend.lines()))


def test_start_up_accepts_an_attested_pruning_only(tmp_path: Path) -> None:
    backend = Backend("sqlite", tmp_path)
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    opened = backend.open(retention_days=30, clock=lambda: now[0])
    fill(opened, 5)
    now[0] = datetime(2026, 3, 1, tzinfo=UTC)
    fill(opened, 3)
    assert opened.prune(datetime(2026, 3, 1, tzinfo=UTC)) is not None
    opened.close()
    lines = backend.lines()
    assert stored_seq(lines[0]) != 1
    _read_changes(lines)
    with pytest.raises(AuditUnavailable, match=r"no audit\.checkpoint record attests"):
        _read_changes(lines[1:])


# ---- a settling record that could not be written (control/recordfirst.py) ----------------------

def _healthy_within(sink: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not sink.healthy():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_settling_record_written_later_ends_the_failure(sink: Any, backend: Backend) -> None:
    """The database came back (or the disk has room again): the settling record is written,
    first, and records are accepted again; no restart needed. Until then nothing is."""
    fill(sink, 2)
    gate = threading.Event()

    def settle() -> AuditEvent:  # the store read back: it cannot tell until the gate opens
        if not gate.wait(5):
            raise AuditUnavailable("still down")
        return event(7, outcome="success", message="the settling record")
    sink.fail_until_recorded("a change was applied but its confirmation could not be recorded",
                             settle)
    with pytest.raises(AuditUnavailable) as refused:
        sink.append(event(8))
    assert "change" not in refused.value.message  # the cause is the operator's, not the caller's
    assert not sink.healthy() and "settling record" in sink.degraded()
    gate.set()
    assert _healthy_within(sink, 5)
    after = sink.append(event(9))
    records = sink.read(limit=100)
    assert [r["message"] for r in records[-2:]] == ["the settling record", "event 9"]
    assert after["seq"] == records[-1]["seq"]
    sink.close()
    assert backend.verify().ok


def test_a_store_that_cannot_tell_yet_is_asked_again(sink: Any) -> None:
    answers = iter([AuditUnavailable("the store is down"), None])

    def settle() -> AuditEvent:
        answer = next(answers)
        if answer is not None:
            raise answer
        return event(7, outcome="rolled_back", message="not applied")
    seen_while_writing: list[bool] = []
    write_group = sink._write_group

    def watched(events: Any, sync: bool) -> Any:
        seen_while_writing.append(sink.healthy())  # a poller's view mid-write
        return write_group(events, sync)
    sink._write_group = watched
    sink.fail_until_recorded("a change may or may not be applied", settle)
    assert _healthy_within(sink, 5)  # the second attempt, a second later
    # healthy only once the record is stored: a CI run read the log at that moment without it
    assert seen_while_writing == [False]
    assert sink.read(limit=100)[-1]["message"] == "not applied"


@pytest.mark.parametrize("first", ["the sink's own", "the settling record's"])
def test_a_sink_failed_otherwise_waits_for_the_restart(sink: Any, first: str) -> None:
    fill(sink, 1)
    gate = threading.Event()

    def settle() -> AuditEvent:
        gate.wait(5)
        return event(7)
    if first == "the sink's own":
        sink.fail_closed("a failure of the sink itself")
        sink.fail_until_recorded("a settling record could not be written", settle)
    else:
        sink.fail_until_recorded("a settling record could not be written", settle)
        sink.fail_closed("the outcome of another change cannot be told")
    gate.set()
    time.sleep(1.5)
    assert not sink.healthy()
    assert "until restart" in sink.degraded()
    assert all(r["details"].get("n") != 7 for r in sink.read(limit=100))

def test_sqlite_duplicated_last_row_is_a_clear_refusal(tmp_path: Path) -> None:
    """The last row copied under the next seq: start-up names the failed integrity check and
    points at `ferrohsm audit verify`, rather than failing on a raw IntegrityError (found by an
    outside tester)."""
    backend = Backend("sqlite", tmp_path)
    opened = backend.open()
    fill(opened, 3)
    opened.close()
    db = sqlite3.connect(backend.log_path)
    db.executescript("CREATE TEMP TABLE last AS SELECT * FROM audit_log WHERE seq = "
                     "(SELECT MAX(seq) FROM audit_log); UPDATE last SET seq = seq + 1; "
                     "INSERT INTO audit_log SELECT * FROM last;")
    db.commit()
    db.close()
    with pytest.raises(AuditUnavailable, match=r"fails its integrity check \(its last record: "
                       r"row \d+ holds record seq \d+\); run `ferrohsm audit verify`"):
        backend.open()


def test_a_settling_record_already_stored_is_not_written_again(sink: Any) -> None:
    """The write was refused, yet stored: a database's COMMIT that went through while its answer
    was lost with the connection. The retry finds it and does not settle the change twice."""
    fill(sink, 2)
    intent = sink.append(event(5, outcome="intent"))
    settled = event(6, outcome="success", details={"intent_seq": intent["seq"]})
    sink.append(settled)  # what the lost COMMIT stored
    fill(sink, 3)  # other writers went on
    sink.fail_until_recorded("a confirmation could not be recorded (its answer was lost)",
                             settled)
    assert _healthy_within(sink, 5)
    same = [r for r in sink.read(limit=1000)
            if r["outcome"] == "success" and r["details"].get("intent_seq") == intent["seq"]]
    assert len(same) == 1
