"""The flush in two halves (audit/splitflush.py) on a real file sink: what ``start_flush`` hands
out, that the flush lock may be re-entered by its holder, and a sink without an fd to hand out
flushing in place."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ferrohsm.audit.chain import AuditEvent
from ferrohsm.audit.sinks import FileSink

KEY = hashlib.sha256(b"split flush key").digest()


def event(message: str) -> AuditEvent:
    return AuditEvent(actor="svc", role="service", action="key.encrypt", outcome="success",
                      message=message)


class OwnFsync(FileSink):
    """A sink with its own flush: it cannot hand an fd to a caller."""

    def __init__(self, directory: str) -> None:
        self.fsyncs = 0
        super().__init__(directory, KEY)

    def _fsync(self, fd: int) -> None:
        self.fsyncs += 1
        super()._fsync(fd)


def test_the_caller_flushes_the_fd_it_is_given(tmp_path: Path) -> None:
    sink = FileSink(str(tmp_path), KEY)
    try:
        assert sink.flushes_by_caller()
        ticket = sink.append(event("one"), durable=False)  # queued: start_flush writes it
        pending = sink.start_flush(ticket)
        assert pending is not None and pending.fd is not None
        assert not sink.is_durable(ticket)
        os.fsync(pending.fd)
        sink.finish_flush(pending, None)
        assert sink.is_durable(ticket) and sink.start_flush(ticket) is None
    finally:
        sink.close()


def test_the_holder_of_the_flush_may_flush_again_meanwhile(tmp_path: Path) -> None:
    """The event loop holds the flush lock while its io_uring fsync runs; a flush on the loop
    meanwhile (a read's catch_up after another process wrote) runs in turn instead of waiting
    for itself."""
    sink = FileSink(str(tmp_path), KEY)
    try:
        first = sink.append(event("first"), durable=False)
        pending = sink.start_flush(first)
        assert pending is not None and pending.fd is not None
        second = sink.append(event("second"), durable=False)
        sink.wait(second)  # same thread, flush lock held: no deadlock
        assert sink.is_durable(first) and sink.is_durable(second)  # one flush covered both
        os.fsync(pending.fd)
        sink.finish_flush(pending, None)
        assert sink.head()[0] == second.seq and sink.healthy()
        assert [r["message"] for r in sink.read(0)][-2:] == ["first", "second"]
    finally:
        sink.close()


def test_a_sink_with_its_own_fsync_flushes_in_place(tmp_path: Path) -> None:
    sink = OwnFsync(str(tmp_path))
    try:
        assert not sink.flushes_by_caller()
        ticket = sink.append(event("one"), durable=False)
        before = sink.fsyncs
        assert sink.start_flush(ticket) is None  # nothing handed out: durable already
        assert sink.is_durable(ticket) and sink.fsyncs == before + 1
    finally:
        sink.close()
