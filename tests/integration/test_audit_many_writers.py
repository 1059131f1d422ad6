"""One audit log, many writers: real OS processes appending to one file, SQLite or PostgreSQL log.

Each writer is its own Python process (what ``processes = N`` and nodes on one database are),
with two threads of its own (so group commit inside a process meets the lock between
processes), half its records durable appends and half tickets. Afterwards the offline verifier
checks the whole log: one unbroken chain, no seq lost or given twice, every acknowledged record
present at the seq its writer was told. Then the same with a writer killed (SIGKILL) in the
middle of a batch: the others go on (the kernel or the database releases its lock) and the log
still verifies, every acknowledged record included.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferrohsm.audit.offline import load_checkpoints
from ferrohsm.audit.pgsink import stored_lines
from ferrohsm.audit.verify import VerifyResult, verify_paths

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # tests/pgserver.py, beside the test folders
import pgserver  # noqa: E402  # after its folder is on the path

KEY = hashlib.sha256(b"many writers audit key").digest()

WRITER = textwrap.dedent("""
    import base64, os, signal, sys, threading
    sys.path.insert(0, sys.argv[1])
    from ferrohsm.audit.chain import AuditEvent
    from ferrohsm.audit.sinks import FileSink, PostgresSink, SQLiteSink

    root, kind, where, node_dir, name = sys.argv[1:6]
    count, die_after = int(sys.argv[6]), int(sys.argv[7])
    key = base64.b64decode(os.environ["AUDIT_KEY"])
    calls = [0]

    def die_mid_batch():
        # called where the batch is written but not yet durable (fsync / COMMIT)
        calls[0] += 1
        if die_after and calls[0] > die_after:
            os.kill(os.getpid(), signal.SIGKILL)

    class File(FileSink):
        def _fsync(self, fd):
            die_mid_batch()
            super()._fsync(fd)

    class Lite(SQLiteSink):
        def _commit(self, db):
            die_mid_batch()
            super()._commit(db)

    class Pg(PostgresSink):
        def _commit(self, conn):
            die_mid_batch()
            super()._commit(conn)

    if kind == "file":
        sink = File(where, key, segment_max_bytes=16384, anchor_every=40)
    elif kind == "sqlite":
        sink = Lite(where, key, anchor_every=40)
    else:
        sink = Pg(where, key, directory=node_dir, anchor_every=40)
    out = threading.Lock()
    print("ready", flush=True)
    sys.stdin.readline()  # every writer starts at once

    def work(thread):
        for n in range(count // 2):
            message = f"{name} t{thread} n{n}"
            event = AuditEvent(actor=name, role="operator", action="key.encrypt",
                               outcome="success", message=message)
            if n % 2:
                ticket = sink.append(event, durable=False)
                sink.wait(ticket)
                seq = ticket.seq
            else:
                seq = sink.append(event)["seq"]
            with out:
                print(seq, message, flush=True)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    print("done", flush=True)
""")


class Log:
    """One log of a kind, the writers' processes, and what they were told."""

    def __init__(self, kind: str, root: Path, dsn: str = "") -> None:
        self.kind, self.root, self.dsn = kind, root, dsn
        self.dir = root / "audit"
        self.where = {"file": str(self.dir), "sqlite": str(self.dir / "audit.db"),
                      "postgres": dsn}[kind]
        self.acked: dict[int, str] = {}

    def node_dir(self, name: str) -> Path:
        """Where a writer keeps its checkpoints: the shared directory on one host, each
        node's own directory for PostgreSQL."""
        return self.root / name if self.kind == "postgres" else self.dir

    def start(self, name: str, count: int, die_after: int = 0,
              wait: bool = True) -> subprocess.Popen[str]:
        """A writer process; with ``wait``, once it has opened the log."""
        env = dict(os.environ, AUDIT_KEY=base64.b64encode(KEY).decode())
        argv = [sys.executable, "-c", WRITER, str(ROOT), self.kind, self.where,
                str(self.node_dir(name)), name, str(count), str(die_after)]
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        if wait:
            self._ready(proc)
        return proc

    def _ready(self, proc: subprocess.Popen[str]) -> None:
        if getattr(proc, "ready", False):
            return
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", line + (proc.stderr.read() if proc.stderr else "")
        proc.ready = True  # type: ignore[attr-defined]  # a mark on the test's own object

    def run(self, procs: list[subprocess.Popen[str]]) -> list[int]:
        """Start the writers together; collect what each was acknowledged; exit codes."""
        for proc in procs:
            self._ready(proc)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
        codes = []
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            codes.append(proc.returncode)
            for line in out.split("\n")[:-1]:  # a line cut by SIGKILL was never told whole
                if line[:1].isdigit():
                    seq, message = line.split(" ", 1)
                    assert int(seq) not in self.acked, f"seq {seq} acknowledged twice"
                    self.acked[int(seq)] = message
            if proc.returncode not in (0, -signal.SIGKILL):
                raise AssertionError(f"writer failed ({proc.returncode}): {err[-2000:]}")
        return codes

    def lines(self) -> list[bytes]:
        if self.kind == "postgres":
            return list(stored_lines(self.dsn))
        if self.kind == "sqlite":
            import sqlite3
            with sqlite3.connect(self.where) as db:
                return [str(r[0]).encode() for r in
                        db.execute("SELECT record FROM audit_log ORDER BY seq")]
        return [line for seg in sorted(self.dir.glob("audit-*.jsonl"))
                for line in seg.read_bytes().splitlines()]

    def verify(self) -> VerifyResult:
        """The whole log offline, against every writer's signed checkpoints."""
        path = self.where
        if self.kind == "postgres":  # what `ferrohsm audit export` writes
            path = str(self.root / "export.jsonl")
            Path(path).write_bytes(b"".join(x + b"\n" for x in self.lines()))
        folders = sorted({p.parent for p in self.root.rglob("checkpoints.jsonl")})
        assert folders, "no writer signed a checkpoint"
        for folder in folders:
            result = verify_paths([path], KEY,
                                  checkpoints=load_checkpoints(str(folder / "checkpoints.jsonl")),
                                  public_key_pem=(folder / "audit-signing-key.pub.pem")
                                  .read_bytes())
            assert result.ok, (folder, result.problem)
        return result

    def check_everything_acknowledged_is_there(self) -> None:
        records = [json.loads(line) for line in self.lines()]
        seqs = [r["seq"] for r in records]
        assert seqs == list(range(1, len(seqs) + 1))  # one chain: no gap, nothing twice
        by_seq = {r["seq"]: r for r in records}
        for seq, message in self.acked.items():
            assert by_seq[seq]["message"] == message, f"acknowledged seq {seq} is not its record"


@pytest.fixture(scope="module")
def postgres() -> Iterator[pgserver.PostgresServer]:
    pgserver.skip_unless_available()
    with pgserver.running() as server:
        yield server


@pytest.fixture(params=["file", "sqlite", "postgres"])
def shared_log(request: pytest.FixtureRequest, tmp_path: Path) -> Log:
    if request.param == "postgres":
        server: pgserver.PostgresServer = request.getfixturevalue("postgres")
        return Log("postgres", tmp_path, server.new_database())
    return Log(request.param, tmp_path)


def test_writers_in_separate_processes_make_one_chain(shared_log: Log) -> None:
    procs = [shared_log.start(f"w{i}", 60) for i in range(4)]
    assert shared_log.run(procs) == [0, 0, 0, 0]
    assert len(shared_log.acked) == 4 * 60
    result = shared_log.verify()
    shared_log.check_everything_acknowledged_is_there()
    assert result.records_checked >= 4 * 60 + 1
    records = [json.loads(line) for line in shared_log.lines()]
    actions = [r["action"] for r in records]
    assert actions.count("audit.genesis") == 1  # four openers, one log
    actors = [r["actor"] for r in records if r["actor"].startswith("w")]
    switches = sum(1 for a, b in itertools.pairwise(actors) if a != b)
    assert switches > 8, "the writers did not interleave: nothing was tested"
    if shared_log.kind == "file":  # rotation happened under contention, and is in the chain
        assert actions.count("audit.segment_start") >= 2


def test_a_writer_killed_mid_batch_loses_only_what_it_was_never_told(shared_log: Log) -> None:
    victim = shared_log.start("victim", 400, die_after=15)
    others = [shared_log.start(f"w{i}", 80) for i in range(3)]
    codes = shared_log.run([victim, *others])
    assert codes == [-signal.SIGKILL, 0, 0, 0]
    assert sum(1 for m in shared_log.acked.values() if m.startswith("victim")) >= 1
    shared_log.verify()
    shared_log.check_everything_acknowledged_is_there()
    # and the log goes on: a writer opened after the crash appends to the same chain
    after = shared_log.start("after", 4)
    assert shared_log.run([after]) == [0]
    shared_log.verify()
    shared_log.check_everything_acknowledged_is_there()


TORN = textwrap.dedent("""
    import base64, os, signal, sys
    sys.path.insert(0, sys.argv[1])
    from ferrohsm.audit.chain import AuditEvent
    from ferrohsm.audit.sinks import FileSink
    sink = FileSink(sys.argv[2], base64.b64decode(os.environ["AUDIT_KEY"]))
    sink.append(AuditEvent(actor="x", role="r", action="key.sign", outcome="success",
                           message="before the crash"))
    with sink._lock:  # as a batch: under the lock, half a record, then the process dies
        os.write(sink._fd, b'{"action":"key.sign","actor":"x","client_fin')
        os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_live_writer_cuts_and_records_a_dead_writers_torn_record(tmp_path: Path) -> None:
    log = Log("file", tmp_path)
    first = log.start("first", 2)  # open before the crash: it must find the torn tail itself
    env = dict(os.environ, AUDIT_KEY=base64.b64encode(KEY).decode())
    crashed = subprocess.run([sys.executable, "-c", TORN, str(ROOT), log.where], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert log.run([first]) == [0]
    records = [json.loads(line) for line in log.lines()]
    recovery = [r for r in records if r["action"] == "audit.recovery"]
    assert len(recovery) == 1 and "a torn audit record of 44 bytes" in recovery[0]["message"]
    log.verify()
    log.check_everything_acknowledged_is_there()


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_opening_writers_wait_for_each_other_and_write_one_genesis(tmp_path: Path,
                                                                   kind: str) -> None:
    """Eight processes open a new log at the same moment: one genesis, one signing key, one
    chain (the key, and a new SQLite database, are linked into place, so nobody reads half of
    either), and nothing left of the database's making."""
    log = Log(kind, tmp_path)
    started = time.monotonic()
    procs = [log.start(f"w{i}", 2, wait=False) for i in range(8)]  # all opening at once
    assert log.run(procs) == [0] * 8
    assert time.monotonic() - started < 120
    actions = [json.loads(line)["action"] for line in log.lines()]
    assert actions.count("audit.genesis") == 1 and len(actions) == 1 + 8 * 2
    log.verify()
    assert not [p.name for p in tmp_path.rglob("*.new-*")]
