"""The scheduler's clock: a wall clock stepped forward by mistake runs no irreversible work
(a time tester's five seconds at +400 days deleted a whole SQLite audit log through retention);
a step that holds is taken after ``adopt_after``; a step back is taken at once."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ferrohsm.control.steadyclock import SteadyClock

START = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


class Clocks:
    def __init__(self) -> None:
        self.wall, self.elapsed = START, 1000.0

    def run(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.elapsed += seconds


def test_in_step_it_is_the_wall_clock() -> None:
    c = Clocks()
    clock = SteadyClock(lambda: c.wall, lambda: c.elapsed, adopt_after=3600)
    c.run(60)
    assert clock() == c.wall
    c.wall += timedelta(seconds=1)  # drift within the slack
    assert clock() == c.wall


def test_a_forward_jump_is_not_taken_until_it_has_held(caplog: pytest.LogCaptureFixture) -> None:
    c = Clocks()
    clock = SteadyClock(lambda: c.wall, lambda: c.elapsed, adopt_after=3600)
    c.run(10)
    before = clock()
    c.wall += timedelta(days=400)
    with caplog.at_level(logging.WARNING, logger="ferrohsm.scheduler"):
        assert clock() == before  # the jump: the scheduler's time goes on from before it
        c.run(5)
        assert clock() == before + timedelta(seconds=5)
    assert "jumped" in caplog.text
    c.wall -= timedelta(days=400)  # the mistake is undone: back in step, nothing ran
    assert clock() == c.wall == before + timedelta(seconds=5)


def test_a_forward_step_that_holds_is_taken_after_adopt_after() -> None:
    c = Clocks()
    clock = SteadyClock(lambda: c.wall, lambda: c.elapsed, adopt_after=3600)
    c.wall += timedelta(days=2)  # a real correction: the clock was two days behind
    assert clock() == START
    c.run(3599)
    assert clock() == START + timedelta(seconds=3599)
    c.run(1)
    assert clock() == c.wall  # held for an hour: taken
    c.run(60)
    assert clock() == c.wall


def test_a_step_back_is_taken_at_once() -> None:
    c = Clocks()
    clock = SteadyClock(lambda: c.wall, lambda: c.elapsed, adopt_after=3600)
    c.run(60)
    c.wall -= timedelta(days=1)
    assert clock() == c.wall  # work waits for the clock to catch up; nothing runs twice
    c.run(30)
    assert clock() == c.wall


def test_the_live_scheduler_prunes_no_audit_record_for_a_wall_clock_jump(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The time tester's case through the composition root: a SQLite audit log with one day of
    retention, the scheduler running, the wall clock five seconds at +400 days."""
    import base64
    import secrets
    import time

    from ferrohsm import app as wiring
    from ferrohsm.audit.chain import AuditEvent
    from ferrohsm.config import load_config, load_secrets

    monkeypatch.setenv("FERROHSM_MASTER_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
    monkeypatch.setenv("FERROHSM_JWT_HS256_SECRET", secrets.token_urlsafe(48))
    monkeypatch.setenv("FERROHSM_AUDIT_HMAC_KEY",
                       base64.b64encode(secrets.token_bytes(32)).decode())
    cfg = tmp_path / "f.toml"
    cfg.write_text(f'[storage]\nkey_store = "sqlite"\ndata_dir = "{tmp_path / "data"}"\n'
                   '[audit]\nsink = "sqlite"\nretention_days = 1.0\n'
                   '[scheduler]\ninterval_seconds = 1\n')
    config = load_config(str(cfg))
    rt = wiring.build_runtime(config, load_secrets(config))
    jump = timedelta(0)
    real = rt.service.clock
    rt.service.clock = lambda: real() + jump
    try:
        for n in range(3):
            rt.audit.append(AuditEvent(actor="a", role="r", action="key.create",
                                       outcome="success", message=f"m{n}"))
        before = [r["seq"] for r in rt.audit.read(0, 100)]
        thread = wiring.start_scheduler(rt)
        time.sleep(1.5)  # a tick in step
        jump = timedelta(days=400)
        time.sleep(2.5)  # ticks during the jump
        jump = timedelta(0)
        time.sleep(1.5)
        after = [r["seq"] for r in rt.audit.read(0, 100)]
        assert after[:len(before)] == before  # nothing pruned
        assert not any(r["action"] == "audit.checkpoint" and "retention" in r["message"]
                       for r in rt.audit.read(0, 100))
    finally:
        rt.stop.set()
        thread.join(10)
        rt.audit.close()
