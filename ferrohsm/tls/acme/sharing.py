"""Several processes of one host on one ACME cache (``[server] processes = N``): one leads.

Every process serves the same port (SO_REUSEPORT) from the same cache, but only one may order
certificates and listen for http-01 (that port can be bound once), and a tls-alpn-01
validation reaches whichever process the kernel hands the connection to. So the process holding
``flock`` on ``<cache>/.leader`` orders, renews and answers http-01; the others follow: they
serve the certificate the leader saved (looking for a new one every FOLLOW_SECONDS) and mirror
the tls-alpn-01 answers the leader publishes in ``<cache>/tls-alpn-answers.json``, so that a
validation handshake gets the challenge certificate whichever process takes it. With followers
the leader waits SYNC_SECONDS after publishing an answer before it tells the CA to look. When
the leader dies the kernel drops its lock, and the next follower to look takes over (binding
the http-01 port then); the supervisor's restarted process follows.

A key authorization is no secret (http-01 serves it to anyone who asks); the file is 0600 all
the same, like everything in the cache.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ...smallfile import atomic_write
from .order import Responder

FOLLOW_SECONDS = 1.0
FOLLOW_FIRST_SECONDS = 0.2  # while a follower has no certificate at all
SYNC_SECONDS = 2.5  # more than FOLLOW_SECONDS: every follower has looked since
LEADER_FILE = ".leader"
ANSWERS_FILE = "tls-alpn-answers.json"

Answers = dict[str, tuple[str, str]]  # domain -> (token, key authorization)


class LeaderLock:
    """``flock`` on ``<cache>/.leader``, taken without waiting and held until ``release``."""

    def __init__(self, root: Path) -> None:
        self._path = root / LEADER_FILE
        self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def try_acquire(self) -> bool:
        if self._fd >= 0:
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # drops the lock
            self._fd = -1


class SharedAnswers:
    """The tls-alpn-01 answers the leader publishes, as the followers read them."""

    def __init__(self, root: Path) -> None:
        self._path = root / ANSWERS_FILE
        self._seen: tuple[int, int, int] | None = None

    def publish(self, answers: Mapping[str, tuple[str, str]]) -> None:
        data = {domain: list(pair) for domain, pair in answers.items()}
        atomic_write(self._path, json.dumps(data, sort_keys=True).encode(), 0o600)

    def changed(self) -> Answers | None:
        """The published answers when the file changed since the last look, else None (one
        ``stat`` when nothing changed). A missing or unreadable file publishes nothing."""
        try:
            st = os.stat(self._path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._seen:
            return None
        self._seen = stamp
        try:
            data = json.loads(self._path.read_bytes()) if stamp is not None else {}
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(domain).lower(): (str(pair[0]), str(pair[1])) for domain, pair in data.items()
                if isinstance(pair, list) and len(pair) == 2}


class Publishing:
    """The leader's tls-alpn-01 responder: each answer also goes to the followers."""

    def __init__(self, inner: Responder, answers: SharedAnswers, wait: float,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.inner, self.answers, self.wait, self.sleep = inner, answers, wait, sleep
        self.challenge_type = inner.challenge_type
        self._current: Answers = {}

    def add(self, domain: str, token: str, key_authorization: str) -> None:
        self.inner.add(domain, token, key_authorization)
        self._current[domain.lower()] = (token, key_authorization)
        self.answers.publish(self._current)
        if self.wait:
            self.sleep(self.wait)  # the followers look meanwhile; then the CA is told

    def remove(self, domain: str, token: str) -> None:
        self.inner.remove(domain, token)
        self._current.pop(domain.lower(), None)
        self.answers.publish(self._current)


def mirror(responder: Responder, had: Answers, now: Answers) -> None:
    """Make a follower's responder answer ``now`` where it answered ``had``."""
    for domain, (token, _) in had.items():
        if domain not in now:
            responder.remove(domain, token)
    for domain, pair in now.items():
        if had.get(domain) != pair:
            responder.add(domain, *pair)
