"""Structured JSON log lines on stderr. Messages never carry secrets; see tests/test_logs*.

The lines are queued for the access log's writer thread (telemetry/access.py), not written by
the thread that logs: a stderr nobody reads (a stuck log shipper, a full pipe) then stalls no
request and no shutdown, and every line of the process, access or not, keeps its order.
"""

from __future__ import annotations

import json
import logging
import time

from .access import ACCESS

LIBRARY_LIMIT = 2000  # characters kept of a library's message (psycopg, OpenTelemetry)


class QueuedStderr(logging.Handler):
    """Hands each formatted line to the access log's writer (ACCESS.add_line)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            ACCESS.add_line(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if len(message) > LIBRARY_LIMIT and not record.name.startswith("ferrohsm"):
            message = message[:LIBRARY_LIMIT] + " …"  # psycopg repeated one warning 30 KB long
        if message.startswith("{") and record.name == "ferrohsm.access":
            body = json.loads(message)
        else:
            body = {"message": message}
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z", "level": record.levelname.lower(),
                 "logger": record.name, **body}
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), default=str)


_fatal_as_json = False  # setup_logging(fatal_as_json=True): `serve`, not `quickstart`


def setup_logging(level: str = "INFO", *, fatal_as_json: bool = False) -> None:
    """JSON lines on stderr. ``fatal_as_json``: the reason the server stops is one of them
    (``serve``, read by log pipelines); else plain text (``quickstart``, read by a person)."""
    global _fatal_as_json
    _fatal_as_json = fatal_as_json
    handler = QueuedStderr()
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger("ferrohsm")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # The libraries' own messages as JSON lines too, WARNING at least (their INFO is per
    # call): the OpenTelemetry SDK's (an unreachable collector, a full span queue) when export
    # is on, psycopg's (a pipeline ended on a lost connection) with PostgreSQL. Without a
    # handler Python's last resort would print them as bare text among the JSON lines.
    for name in ("opentelemetry", "psycopg"):
        library = logging.getLogger(name)
        library.handlers[:] = [handler]
        library.setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
        library.propagate = False


def fatal(message: str) -> bool:
    """Say why the server stops as one JSON line (level critical) when the JSON log is set up,
    so a pipeline that reads stderr as JSON gets its most important line too; False when it is
    not (the caller prints plain text: the failure came before the log was set up, or it is
    ``quickstart``'s, read by a person)."""
    root = logging.getLogger("ferrohsm")
    if not _fatal_as_json or not any(isinstance(h.formatter, JSONFormatter)
                                     for h in root.handlers):
        ACCESS.drain()  # the lines logged before it go first (the caller prints it directly)
        return False
    root.critical(message)
    return True
