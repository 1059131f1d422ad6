"""Start-up checks beside other live writers of the same audit log (``processes = N``, nodes).

Another process may be opening the log (genesis written, first checkpoint not yet), or may have
appended and signed a checkpoint beyond the head this process saw when it opened the log: none of
that is a cut or deleted log, and start-up must not refuse it. The real thing (a log actually cut
behind its checkpoints) is still refused: tests/integration/test_truncation_detected.py.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ferrohsm.audit.chain import AuditEvent
from ferrohsm.audit.oslock import ProcessLock
from ferrohsm.audit.pgsink import PostgresSink
from ferrohsm.audit.sinks import FileSink
from ferrohsm.domain.model import Page
from ferrohsm.integrity import logcheck
from ferrohsm.integrity.logscan import AuditLocation, created_keys

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/pgserver.py
import pgserver  # after its folder is on the path

KEY = b"k" * 32


def event(n: int, action: str = "key.encrypt", key_id: str | None = None) -> AuditEvent:
    return AuditEvent(actor="alice", role="operator", action=action, outcome="success",
                      message=f"event {n}", key_id=key_id)


class Keys:
    """Just enough of a KeyStore: one page of keys, each bound to an audit seq."""

    def __init__(self, *bound: int) -> None:
        self.keys = [SimpleNamespace(id=f"key-{n}", audit_seq=seq) for n, seq in enumerate(bound)]

    def list(self, _filter: Any, limit: int, page_token: str | None) -> Page:
        return Page(self.keys, None)  # type: ignore[arg-type]  # duck-typed keys

    def walk(self) -> Iterator[Any]:
        return iter(self.keys)

    def count(self) -> int:
        return len(self.keys)


def test_a_log_being_opened_by_another_process_is_waited_for(tmp_path: Path) -> None:
    """The window between another opener's genesis record and its first checkpoint: the
    check waits for the opener's lock instead of refusing a log 'without checkpoints'."""
    directory = tmp_path / "audit"
    FileSink(directory, KEY).close()
    checkpoints = directory / "checkpoints.jsonl"
    saved = checkpoints.read_bytes()
    checkpoints.unlink()  # as if the opener had not written it yet
    opener = ProcessLock(str(directory / ".lock"))
    held = threading.Event()

    def opening() -> None:
        with opener:
            held.set()
            time.sleep(0.3)
            checkpoints.write_bytes(saved)  # ...and now it has
    thread = threading.Thread(target=opening)
    thread.start()
    held.wait(5)
    checks = logcheck.StartupChecks(Keys(), AuditLocation(str(directory)))  # type: ignore[arg-type]
    started = time.monotonic()
    checks.before_audit()  # no StartupRefused
    assert time.monotonic() - started >= 0.2
    thread.join()
    opener.close()
    checkpoints.unlink()  # without anyone opening: really missing, and refused
    with pytest.raises(logcheck.StartupRefused, match="checkpoints"):
        logcheck.StartupChecks(Keys(), AuditLocation(str(directory))).before_audit()  # type: ignore[arg-type]


def test_a_witness_and_key_bindings_ahead_of_this_process_are_caught_up_with(
        tmp_path: Path) -> None:
    directory, witness = tmp_path / "audit", tmp_path / "witness.jsonl"
    mine = FileSink(directory, KEY)
    other = FileSink(directory, KEY)  # another process on the same log
    for n in range(5):
        other.append(event(n))
    bound = other.append(event(9, "key.rotate", "key-0"))["seq"]
    cp = other.make_checkpoint()
    witness.write_bytes(Path(other.anchor.path).read_bytes())  # a file witness's copy
    assert mine.head()[0] < cp["seq"] == bound  # what this process saw at open is behind
    logcheck.check_witness(mine, str(witness))  # not "truncated or rolled back"
    logcheck.check_bindings(Keys(bound), mine.catch_up)  # type: ignore[arg-type]
    assert mine.head()[0] == bound
    with pytest.raises(logcheck.StartupRefused, match="beyond"):
        logcheck.check_bindings(Keys(bound + 5), mine.catch_up)  # type: ignore[arg-type]
    other.close()
    mine.close()


@pytest.fixture(scope="module")
def postgres() -> Iterator[pgserver.PostgresServer]:
    pgserver.skip_unless_available()
    with pgserver.running() as server:
        yield server


def test_the_start_up_scan_reads_a_postgres_log(postgres: pgserver.PostgresServer,
                                                tmp_path: Path) -> None:
    dsn = postgres.new_database()
    location = AuditLocation(str(tmp_path / "node" / "audit"), "postgres", dsn)
    assert not location.present()  # no table yet: a new installation
    sink = PostgresSink(dsn, KEY, directory=location.directory)
    sink.append(event(1, "key.create", "key-a"))
    sink.append(event(2, "key.create", "key-b"))
    sink.append(event(3, "key.lost", "key-a"))
    sink.close()
    assert location.present() and location.has_checkpoints()
    assert created_keys(location) == {"key-b"}
    assert dsn not in repr(location)  # the DSN may carry a password
    newcomer = AuditLocation(str(tmp_path / "new-node" / "audit"), "postgres", dsn)
    assert newcomer.has_checkpoints()  # a node new to the cluster has signed none yet
    (Path(location.directory) / "checkpoints.jsonl").unlink()  # deleted, with a cut hidden
    assert not location.has_checkpoints()  # its signing key says it had some
