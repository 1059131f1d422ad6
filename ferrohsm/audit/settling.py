"""A change's settling record written late: the failure it caused ends once it is written.

Mixed into ChainedSink (sinkbase.py), which owns the state named here. When the record that
settles a change (control/recordfirst.py: its success or its rollback) cannot be written, the
change is applied, or not, and the log does not say so yet: the sink refuses every record, so
nothing else happens meanwhile. A restart used to be the only way out, its reconciliation
settling the intent from the store. But the usual causes pass on their own, a database restarted
or a connection cut, a disk given room again: a thread of its own tries the record every second
and, once it is written, records are accepted again. Where the store could not tell whether the
write happened, the record is made by reading the store again (a resolver), the same rule the
request would have applied. Any other failure of the sink, before or meanwhile, still holds
until a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..domain.errors import AuditUnavailable
from .chain import AuditEvent, PreparedEvent, prepare

log = logging.getLogger("ferrohsm.audit")
Settle = AuditEvent | Callable[[], AuditEvent]  # the record, or what makes it from the store
MAX_PAGES = 100  # records read back for a settlement already stored: 100,000 after its intent


class Settling:
    """Mixed into ChainedSink, which owns the state named here."""

    _io_lock: threading.RLock
    _failed: str | None
    _closed: bool
    _failures: int
    _written: tuple[int, str]
    _reported: set[str]
    _unsettled: list[Settle]
    _unsettled_reason: str | None
    _settler: threading.Thread | None
    _settling: bool

    if TYPE_CHECKING:  # ChainedSink's and its backends' (no stub here may shadow them)
        def _write_group(self, events: list[PreparedEvent],
                         sync: bool) -> list[dict[str, Any]]: ...

        def _set_head(self, head: tuple[int, str]) -> None: ...

        def read(self, after_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]: ...

    def fail_until_recorded(self, reason: str,
                            settle: AuditEvent | Callable[[], AuditEvent]) -> None:
        """Fail closed because a change's settling record (control/recordfirst.py) could not be
        written, a lost database connection or a full disk: ``settle`` is that record, or makes
        it once the store can be read again (a change whose store write may or may not have
        happened). Nothing else is recorded meanwhile, as with ``fail_closed``; but where the
        sink itself is sound the failure ends once the record is written, tried every second
        on a thread of its own. Any other failure, before or meanwhile, holds until a restart."""
        with self._io_lock:
            self._unsettled.append(settle)
            if self._failed is None:
                self._failed = self._unsettled_reason = reason
                self._reported.add(reason)
                self._failures += 1
            if self._failed == self._unsettled_reason and (
                    self._settler is None or not self._settler.is_alive()):
                self._settler = threading.Thread(target=self._settle_loop, daemon=True,
                                                 name="ferrohsm-audit-settle")
                self._settler.start()
        log.critical("audit: refusing every record until the settling record is written: %s",
                     reason)

    def _not_stored(self, events: list[AuditEvent]) -> list[AuditEvent]:
        """Those of ``events`` the log does not hold yet. A write refused with an error may
        still have been stored: a database's COMMIT that went through while its answer was
        lost with the connection. Written again, the change would be settled twice."""
        wanted = {(e.details.get("intent_seq"), e.action, e.outcome): e for e in events}
        first = min((seq for seq, _, _ in wanted if isinstance(seq, int)), default=None)
        if first is None:
            return events
        after, found = first, set()
        for _ in range(MAX_PAGES):
            page = self.read(after_seq=after, limit=1000)
            for record in page:
                found.add(((record.get("details") or {}).get("intent_seq"),
                           record.get("action"), record.get("outcome")))
            if len(page) < 1000:
                break
            after = page[-1]["seq"]
        return [event for key, event in wanted.items() if key not in found]

    def _settle_loop(self) -> None:
        while not self._closed and not self._try_settle():
            time.sleep(1.0)

    def _try_settle(self) -> bool:
        """One attempt; True when there is nothing more to try (settled, or not ours to end)."""
        failed = self._failed
        if failed is None or failed != self._unsettled_reason or self._closed:
            return True
        pending = list(self._unsettled)
        try:  # a resolver reads the store, and the log is read: outside the lock
            made = [s if isinstance(s, AuditEvent) else s() for s in pending]
            events = [prepare(event) for event in self._not_stored(made)]
        except Exception as exc:  # still cannot tell; the next second may
            log.info("audit: a change's outcome cannot be told yet: %s", exc)
            return False
        with self._io_lock:
            if self._failed != failed or self._unsettled_reason != failed:
                return True  # failed otherwise meanwhile: until a restart
            if self._unsettled[:len(pending)] != pending:
                return False
            self._failed, self._settling = None, True  # healthy() says no until written
            try:
                try:
                    if events:
                        self._write_group(events, sync=True)
                except AuditUnavailable:
                    if self._failed is None:
                        self._failed = failed
                    return False
                self._set_head(self._written)
                del self._unsettled[:len(pending)]
                if self._unsettled:  # more came meanwhile: the failure holds for them
                    self._failed = failed
                    return False
                self._unsettled_reason = None
            finally:
                self._settling = False
        log.warning("audit: the settling record(s) are written; records are accepted again "
                    "(after: %s)", failed)
        return True
