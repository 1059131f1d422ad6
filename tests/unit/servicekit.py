"""Shared pieces for tests that drive KeyService with an injected clock.

``RecordingAudit`` is a REAL FileSink (records hash-chained and written to a temporary directory)
with a switch that makes it refuse, the way the fail_writes=True stores do, plus a list of
the events it accepted so tests can assert on actions without parsing the log.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal, overload

from ferrohsm.audit.chain import AuditEvent
from ferrohsm.audit.sinks import FileSink, Ticket
from ferrohsm.domain.errors import AuditUnavailable


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class RecordingAudit:
    def __init__(self) -> None:
        directory = tempfile.mkdtemp(prefix="ferrohsm-audit-")
        self.sink = FileSink(directory, secrets.token_bytes(32), durable=False)
        weakref.finalize(self, _dispose, self.sink, directory)
        self.events: list[AuditEvent] = []
        self.lock = threading.Lock()
        self.ok = True
        self.failed = ""

    @overload
    def append(self, event: AuditEvent, *, durable: Literal[True] = ...) -> dict[str, Any]: ...
    @overload
    def append(self, event: AuditEvent, *, durable: Literal[False]) -> Ticket: ...
    @overload
    def append(self, event: AuditEvent, *, durable: bool) -> dict[str, Any] | Ticket: ...
    def append(self, event: AuditEvent, *, durable: bool = True) -> dict[str, Any] | Ticket:
        if not self.ok:
            raise AuditUnavailable("audit down")
        record = self.sink.append(event, durable=durable)
        with self.lock:
            self.events.append(event)
        return record

    def healthy(self) -> bool:
        return self.ok and self.sink.healthy()

    def fail_closed(self, reason: str) -> None:
        """As a real sink does: refuse every further record (until a test switches it back)."""
        self.failed = reason
        self.ok = False

    def fail_until_recorded(self, reason: str,
                            settle: AuditEvent | Callable[[], AuditEvent]) -> None:
        """As fail_closed: the tests switch it back themselves."""
        self.fail_closed(reason)

    def actions(self, outcome: str | None = None) -> list[str]:
        return [e.action for e in self.events if outcome is None or e.outcome == outcome]

    def count(self, action: str) -> int:
        return sum(e.action == action and e.outcome == "success" for e in self.events)


def _dispose(sink: FileSink, directory: str) -> None:
    sink.close()
    shutil.rmtree(directory, ignore_errors=True)
