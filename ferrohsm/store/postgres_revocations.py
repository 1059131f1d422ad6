"""The revoked-token list (``jti`` -> until when) in PostgreSQL, shared by every node.

Same interface as auth/denylist.DenyList (auth.denylist.RevocationList), different consistency:
a revocation acknowledged by any node is seen by every node on its next request. Answers are
cached per ``jti`` under the revoked-tokens generation (store/pgfresh.py) read before them, and
served only while a check returns that same generation: no row of ``revoked_tokens`` changed
meanwhile. The check is the one the key store's lookups share (once per event-loop turn, or
once per call off the loop), so a cached answer costs no round trip of its own. If the database
cannot be asked, the request fails (StoreError, 503): a revocation is never ignored for want of
a database.

Entries are never filtered by time when checked (nodes' clocks differ); ``prune`` removes the
ones whose every token has expired.
"""

from __future__ import annotations

import threading

from ..domain.errors import StoreError, Unavailable
from ..domain.model import PLAIN_TEXT_RE
from .pgdb import Conn, PgDatabase
from .pgfresh import NO_GENERATION, Freshness, generation_in, require_bump
from .pgschema import prepare

MAX_JTI_CHARS = 128  # auth.denylist.valid_jti: the rule the API publishes for jti


def _valid(jti: object) -> bool:
    return (isinstance(jti, str) and 0 < len(jti) <= MAX_JTI_CHARS
            and PLAIN_TEXT_RE.fullmatch(jti) is not None)


class PostgresDenyList:
    """Revoked ``jti`` values in the ``revoked_tokens`` table."""

    def __init__(self, db: PgDatabase, *, max_entries: int = 100_000,
                 freshness: Freshness | None = None, cache_size: int = 100_000) -> None:
        self._db = db
        self._max = max_entries
        self._last_count = 0
        self.freshness = freshness or Freshness(db)
        self._lock = threading.Lock()
        # (generation, jti -> revoked): answers read after that generation was, swapped whole
        self._answers: tuple[int, dict[str, bool]] = (NO_GENERATION, {})
        self._cache_size = max(cache_size, 1)
        prepare(db)

    def __len__(self) -> int:
        """Entries stored (health only): the last count seen if the database cannot be asked."""
        try:
            count = self._db.health_count("SELECT count(*) FROM revoked_tokens",
                                          "cannot count revoked tokens")
        except StoreError:
            return self._last_count
        if count is not None:
            self._last_count = count
        return self._last_count

    def is_revoked(self, jti: str | None, now: float) -> bool:
        """True when ``jti`` is listed: from memory while the generation this thread trusts is
        the one the answer was read under, else one primary-key lookup."""
        if jti is None:
            return False
        if "\x00" in jti:  # no such jti can be stored (valid_jti refuses control characters)
            return False
        gen = self.freshness.current().tokens  # first the generation, then the answer
        answers_gen, answers = self._answers
        if gen == answers_gen:
            known = answers.get(jti)
            if known is not None:
                return known
        revoked = bool(self._db.fetch(b"fh_revoked", b"SELECT 1 FROM revoked_tokens WHERE "
                                      b"jti = $1", (jti,), "cannot check the revoked-token list"))
        self._keep(jti, revoked, gen)
        return revoked

    def _keep(self, jti: str, revoked: bool, gen: int) -> None:
        """Cache an answer read after generation ``gen`` was; a newer generation starts afresh
        (an older one, from a thread whose turn began earlier, is not kept at all)."""
        with self._lock:
            answers_gen, answers = self._answers
            if gen != answers_gen:
                latest = self.freshness.latest
                if latest is None or latest.tokens != gen:
                    return
                answers = {}
                self._answers = (gen, answers)
            if len(answers) >= self._cache_size:
                answers.clear()
            answers[jti] = revoked

    def revoke(self, jti: str, until: float, now: float) -> None:
        """List ``jti`` until ``until`` (an existing entry only ever lengthens); durable before
        it returns, Unavailable when the list is full."""
        if not _valid(jti):
            raise ValueError("jti must be 1-128 printable characters")
        self.revoke_all({jti: until}, now)

    def revoke_all(self, entries: dict[str, float], now: float) -> None:
        """``revoke`` for many at once (the start-up restore): one transaction, one commit and
        one generation bump. Invalid jtis are skipped."""
        listed = {jti: until for jti, until in entries.items() if _valid(jti)}
        if not listed:
            return

        def work(conn: Conn) -> int:
            before = generation_in(conn, "revoked_tokens")
            for jti, until in listed.items():
                conn.execute("INSERT INTO revoked_tokens (jti, until) VALUES (%s, %s) "
                             "ON CONFLICT (jti) DO UPDATE SET "
                             "until = greatest(revoked_tokens.until, excluded.until)",
                             (jti, until))
            row = conn.execute("SELECT count(*) FROM revoked_tokens WHERE until > %s",
                               (now,)).fetchone()
            live = int(row[0]) if row else 0
            if live > self._max:
                raise Unavailable(f"the token deny-list is full ({self._max} live entries)")
            require_bump(conn, "revoked_tokens", before)  # else other nodes keep the token
            return live
        self._last_count = self._db.run(work, "could not write the revoked-token list")
        with self._lock:  # listed now, and an entry only ever lengthens: true under any check
            self._answers[1].update(dict.fromkeys(listed, True))

    def entries(self, now: float) -> dict[str, float]:
        """Every entry still in force at ``now`` (jti -> until), for a backup archive."""
        rows = self._db.query("SELECT jti, until FROM revoked_tokens WHERE until > %s", (now,),
                              "cannot read the revoked-token list")
        return {str(jti): float(until) for jti, until in rows}

    def prune(self, now: float) -> int:
        """Forget entries whose tokens have all expired; returns how many went."""
        def work(conn: Conn) -> int:
            return int(conn.execute("DELETE FROM revoked_tokens WHERE until <= %s",
                                    (now,)).rowcount)
        return int(self._db.run(work, "could not prune the revoked-token list",
                                transaction=False))

    def reload(self) -> None:
        """Forget every cached answer (SIGHUP); the generation check makes this unnecessary."""
        with self._lock:
            self._answers = (NO_GENERATION, {})
