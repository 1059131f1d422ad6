"""Audit sinks: the public names, gathered in one place.

* ``AuditSink`` — the port (sinkbase.py): ``append`` returns only once a record is durable and
  raises ``AuditUnavailable`` otherwise; ``append(event, durable=False)`` returns a ``Ticket``
  at once, for ``is_durable``/``wait``.
* ``FileSink`` — append-only JSONL segments (filesink.py).
* ``SQLiteSink`` — one SQLite table with retention pruning (sqlitesink.py).
* ``PostgresSink`` — one PostgreSQL table shared by many nodes (pgsink.py; psycopg is imported
  only when one is opened).
* ``Anchor`` — Ed25519-signed checkpoints of the head (anchor.py).
* ``GroupCommit`` — the bounded-leader batching both sinks use (groupcommit.py).

Every sink passes tests/conformance/test_audit_sinks.py; the log they write is checked offline by
``ferrohsm audit verify`` (verify.py).
"""

from __future__ import annotations

from .anchor import Anchor
from .filesink import FileSink
from .groupcommit import GroupCommit
from .pgsink import PostgresSink
from .sinkbase import SHORTER_THAN_CHECKPOINT, AuditSink, ChainedSink, Ticket
from .sqlitesink import SQLiteSink

__all__ = ["SHORTER_THAN_CHECKPOINT", "Anchor", "AuditSink", "ChainedSink", "FileSink",
           "GroupCommit", "PostgresSink", "SQLiteSink", "Ticket"]
