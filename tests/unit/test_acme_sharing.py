"""One ACME cache, several processes (tls/acme/sharing.py): the leader lock, the published
tls-alpn-01 answers and how a follower mirrors them. Two ``LeaderLock`` objects on one file
are two open file descriptions, so they exclude each other as two processes would."""

from __future__ import annotations

import os
from pathlib import Path

from ferrohsm.tls.acme.sharing import (
    ANSWERS_FILE,
    LeaderLock,
    Publishing,
    SharedAnswers,
    mirror,
)


class Recorder:
    challenge_type = "tls-alpn-01"

    def __init__(self) -> None:
        self.answers: dict[str, tuple[str, str]] = {}
        self.calls: list[tuple[str, str]] = []

    def add(self, domain: str, token: str, key_authorization: str) -> None:
        self.answers[domain] = (token, key_authorization)
        self.calls.append(("add", domain))

    def remove(self, domain: str, token: str) -> None:
        assert self.answers.pop(domain)[0] == token
        self.calls.append(("remove", domain))


def test_one_leader_at_a_time_and_the_lead_passes_on_release(tmp_path: Path) -> None:
    first, second = LeaderLock(tmp_path), LeaderLock(tmp_path)
    assert first.try_acquire() and first.held
    assert first.try_acquire()  # holding it already
    assert not second.try_acquire() and not second.held
    first.release()
    assert not first.held and second.try_acquire()
    assert not first.try_acquire()
    assert os.stat(tmp_path / ".leader").st_mode & 0o777 == 0o600
    second.release()


def test_published_answers_are_read_once_per_change(tmp_path: Path) -> None:
    leader, follower = SharedAnswers(tmp_path), SharedAnswers(tmp_path)
    assert follower.changed() is None  # nothing published, nothing changed
    leader.publish({"hsm.test": ("tok", "tok.thumb")})
    assert follower.changed() == {"hsm.test": ("tok", "tok.thumb")}
    assert follower.changed() is None  # one stat while nothing changes
    leader.publish({})
    assert follower.changed() == {}
    assert os.stat(tmp_path / ANSWERS_FILE).st_mode & 0o777 == 0o600


def test_an_unreadable_answers_file_publishes_nothing(tmp_path: Path) -> None:
    follower = SharedAnswers(tmp_path)
    (tmp_path / ANSWERS_FILE).write_text("{not json")
    assert follower.changed() == {}
    (tmp_path / ANSWERS_FILE).write_text('{"a.test": "not a pair", "b.test": ["t", "k"]}')
    assert follower.changed() == {"b.test": ("t", "k")}
    (tmp_path / ANSWERS_FILE).unlink()
    assert follower.changed() == {}


def test_the_leader_publishes_each_answer_then_waits_for_the_followers(tmp_path: Path) -> None:
    inner, waited = Recorder(), list[float]()
    published = SharedAnswers(tmp_path)
    leader = Publishing(inner, SharedAnswers(tmp_path), 2.5, sleep=waited.append)
    assert leader.challenge_type == "tls-alpn-01"
    leader.add("HSM.test", "t1", "t1.k")
    assert inner.answers == {"HSM.test": ("t1", "t1.k")} and waited == [2.5]
    assert published.changed() == {"hsm.test": ("t1", "t1.k")}
    leader.remove("HSM.test", "t1")
    assert inner.answers == {} and waited == [2.5]  # withdrawing needs no wait
    assert published.changed() == {}


def test_without_followers_the_leader_does_not_wait(tmp_path: Path) -> None:
    waited: list[float] = []
    Publishing(Recorder(), SharedAnswers(tmp_path), 0.0, sleep=waited.append).add("a", "t", "k")
    assert waited == []


def test_a_follower_mirrors_what_changed_only() -> None:
    follower = Recorder()
    mirror(follower, {}, {"a.test": ("t1", "k1"), "b.test": ("t2", "k2")})
    assert follower.answers == {"a.test": ("t1", "k1"), "b.test": ("t2", "k2")}
    follower.calls.clear()
    mirror(follower, dict(follower.answers), {"a.test": ("t1", "k1"), "b.test": ("t3", "k3")})
    assert follower.calls == [("add", "b.test")]  # a new token for b; a unchanged
    mirror(follower, dict(follower.answers), {})
    assert follower.answers == {}
