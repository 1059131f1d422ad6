"""The event loop's own fsync through io_uring (api/flusher.py RingFlusher, api/uring.py), over
real sockets with a real file sink: answers leave only once their records are durable, a fsync
the kernel fails turns exactly the waiting answers into 503s and stops the sink (fail closed),
and every case the ring cannot serve keeps the committer thread."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_event_loop import KEY, GatedSink, audited_app, inline, req

from ferrohsm.api import uring
from ferrohsm.api.flusher import SPIN_MIN_REQUESTS, FlushPlan, RingFlusher, ThreadFlusher
from ferrohsm.audit.sinks import FileSink
from ferrohsm.audit.verify import verify_paths


def ring_allowed() -> bool:
    if not uring.available():
        return False
    try:
        uring.FsyncRing().close()
    except uring.RingError:
        return False
    return True


pytestmark = pytest.mark.skipif(not ring_allowed(), reason="io_uring is not available here")


class PipeSink(FileSink):
    """A FileSink whose flush fd becomes a pipe once ``broken`` is set: the kernel's fsync
    then fails with EINVAL, a real failure coming back through the ring."""

    def __init__(self, directory: str) -> None:
        self.broken = False
        self.pipes: list[int] = []
        super().__init__(directory, KEY)

    def _sync_fd(self, token: tuple[int, int, int]) -> int | None:
        if not self.broken:
            return super()._sync_fd(token)
        read_end, write_end = os.pipe()
        os.close(write_end)
        self.pipes.append(read_end)
        return read_end


def flusher(server: Any) -> Any:
    return server._dispatcher._flusher


def test_answers_wait_for_the_rings_fsync_and_the_log_verifies(
        make_server: Any, connect: Any, tmp_path: Path) -> None:
    sink = FileSink(str(tmp_path / "audit"), KEY)
    try:
        server = make_server(audited_app(sink), inline=inline, audit=sink)
        assert isinstance(flusher(server), RingFlusher)
        clients = [connect(server) for _ in range(8)]
        head = sink.head()[0]
        for rounds in range(5):
            for n, client in enumerate(clients):
                client.send(req("/op", f"r{rounds}-{n}"))
            assert [c.read_response().status for c in clients] == [200] * 8
        assert sink.head()[0] == head + 40  # every answered record is durable
        assert sink.describe()["group_commits"] >= 1
        assert not any(t.name == "ferrohsm-audit-commit" for t in threading.enumerate())
    finally:
        sink.close()
    assert verify_paths([str(tmp_path / "audit")], KEY).ok


def test_a_failed_fsync_answers_503_and_stops_the_sink(make_server: Any, connect: Any,
                                                       tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    sink = PipeSink(str(tmp_path / "audit"))
    try:
        server = make_server(audited_app(sink), inline=inline, audit=sink)
        assert isinstance(flusher(server), RingFlusher)
        op, plain = connect(server), connect(server)
        op.send(req("/op", "kept"))
        assert op.read_response().status == 200
        head = sink.head()
        sink.broken = True
        op.send(req("/op", "lost"))
        failed = op.read_response()
        assert failed.status == 503
        assert "fsync of the audit log failed" in failed.json()["error"]["message"]
        assert "flushing written records failed: Invalid argument" in caplog.text  # the errno
        assert sink.head() == head and not sink.healthy()  # nothing acknowledged, fail closed
        plain.send(req("/plain"))
        assert plain.read_response().status == 200  # a request that records nothing goes on
        op.send(req("/op", "after"))
        assert op.read_response().status == 503
        assert [r["message"] for r in sink.read(head[0] - 1)] == ["kept"]
    finally:
        sink.close()
        for fd in sink.pipes:
            os.close(fd)


def test_a_submission_the_ring_refuses_is_fsynced_on_the_loop(
        make_server: Any, connect: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    sink = FileSink(str(tmp_path / "audit"), KEY)
    try:
        server = make_server(audited_app(sink), inline=inline, audit=sink)
        ring = flusher(server).ring

        def refuse(fd: int, user_data: int) -> None:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        ring.submit_fsync = refuse
        client = connect(server)
        head = sink.head()[0]
        client.send(req("/op", "still-durable"))
        assert client.read_response().status == 200
        assert sink.head()[0] == head + 1 and sink.healthy()
        assert "io_uring refused an audit fsync" in caplog.text
    finally:
        sink.close()


@pytest.mark.parametrize("case", ["thread setting", "own fsync", "not durable"])
def test_the_committer_thread_stays_where_the_ring_does_not_apply(
        make_server: Any, connect: Any, tmp_path: Path, case: str) -> None:
    sink: FileSink = (GatedSink(tmp_path / "audit") if case == "own fsync"
                      else FileSink(str(tmp_path / "audit"), KEY,
                                    durable=case != "not durable"))
    try:
        server = make_server(audited_app(sink), inline=inline, audit=sink,
                             flush=FlushPlan("thread" if case == "thread setting" else "auto"))
        assert isinstance(flusher(server), ThreadFlusher)
        client = connect(server)
        client.send(req("/op"))
        assert client.read_response().status == 200
    finally:
        sink.close()


def test_the_loop_polls_only_for_a_busy_flush_and_only_so_long() -> None:
    if not ring_allowed():
        pytest.skip("io_uring is not available here")
    ring = uring.FsyncRing()
    try:
        rf = RingFlusher(ring, None, lambda batches, failure: None,
                         logging.getLogger("test"), spin=0.002)
        now = time.monotonic()
        assert not rf.spinning(now)  # nothing in flight
        rf._inflight, rf._waiting = ([], None, now), SPIN_MIN_REQUESTS
        assert rf.spinning(now) and rf.spinning(now + 0.0019)
        assert not rf.spinning(now + 0.002)  # then the loop sleeps in select
        rf._waiting = SPIN_MIN_REQUESTS - 1
        assert not rf.spinning(now)  # too few waiting: not worth a busy core
        rf._waiting, rf.spin = SPIN_MIN_REQUESTS, 0.0
        assert not rf.spinning(now)  # flush_spin_microseconds = 0: never
    finally:
        ring.close()


def test_a_completion_that_says_the_fsync_did_not_run_is_fsynced_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ring = uring.FsyncRing()
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        rf = RingFlusher(ring, None, lambda batches, failure: None,
                         logging.getLogger("test"), spin=0.0)
        assert rf._outcome(fd, 0) is None
        assert rf._outcome(fd, -errno.ECANCELED) is None  # fsynced again, here: it worked
        assert "did not run an audit fsync" in caplog.text
        caplog.clear()
        assert rf._outcome(fd, -errno.EIO) == os.strerror(errno.EIO)  # final: no second try
        assert caplog.text == ""
    finally:
        os.close(fd)
        ring.close()


def io_workers() -> list[set[int]]:
    """The cores each of this process's io_uring workers may run on."""
    found = []
    for tid in os.listdir("/proc/self/task"):
        try:
            if Path(f"/proc/self/task/{tid}/comm").read_text().startswith("iou-wrk"):
                found.append(os.sched_getaffinity(int(tid)))
        except OSError:  # a worker that exited meanwhile
            pass
    return found


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_the_loops_fsyncs_run_on_the_cores_it_is_given(make_server: Any, connect: Any,
                                                        tmp_path: Path) -> None:
    spare = frozenset({max(os.sched_getaffinity(0))})
    sink = FileSink(str(tmp_path / "audit"), KEY)
    try:
        server = make_server(audited_app(sink), inline=inline, audit=sink,
                             flush=FlushPlan(cores=spare))
        client = connect(server)
        for n in range(3):
            client.send(req("/op", f"steered-{n}"))
            assert client.read_response().status == 200
        assert set(spare) in io_workers()  # the worker that ran them: on the spare core only
    finally:
        sink.close()


def test_cores_the_kernel_refuses_leave_the_fsyncs_where_they_were(
        make_server: Any, connect: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A kernel before 5.14, or cores outside the process's cpuset: EINVAL from the register
    call (this kernel ignores cores it does not have, so the refusal is injected)."""
    caplog.set_level(logging.INFO)
    sink = FileSink(str(tmp_path / "audit"), KEY)
    try:
        server = make_server(audited_app(sink), inline=inline, audit=sink,
                             flush=FlushPlan(cores=frozenset({0})))
        tries = []

        def refuse(cores: frozenset[int]) -> None:
            tries.append(cores)
            raise uring.RingError(errno.EINVAL, "Invalid argument")
        flusher(server).ring.steer_workers = refuse
        client = connect(server)
        head = sink.head()[0]
        for n in range(3):
            client.send(req("/op", f"not-steered-{n}"))
            assert client.read_response().status == 200
        assert sink.head()[0] == head + 3  # durable all the same
        assert tries == [frozenset({0})]  # tried once, before the first fsync
        assert caplog.text.count("audit fsyncs run on the server's own core") == 1
    finally:
        sink.close()
