"""``[server].processes`` / ``--processes N|auto``: the filesystem and memory stores refuse N > 1
with a message that says why, before anything is opened or forked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ferrohsm.cli.main import main
from ferrohsm.cli.nodes import auto_processes
from ferrohsm.config import fsync_cores, load_config
from ferrohsm.domain.errors import ConfigError


def test_auto_is_one_process_per_core_in_a_file_and_the_environment_too(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nprocesses = "auto"\n[storage]\nkey_store = "sqlite"\n')
    assert load_config(str(path), env={}).server.processes == (os.cpu_count() or 1)
    env = {"FERROHSM_SERVER_PROCESSES": "AUTO", "FERROHSM_KEY_STORE": "sqlite"}
    assert load_config(None, env=env).server.processes == (os.cpu_count() or 1)
    path.write_text('[server]\nprocesses = "many"\n')
    with pytest.raises(ConfigError, match=r"\[server\]\.processes must be a whole number or auto"):
        load_config(str(path), env={})
    env = {"FERROHSM_SERVER_PROCESSES": "2", "FERROHSM_KEY_STORE": "sqlite"}
    assert load_config(None, env=env).server.processes == 2  # the environment is text
    with pytest.raises(ConfigError, match="must be a whole number or auto"):
        load_config(None, env={"FERROHSM_SERVER_PROCESSES": "1.5"})


def test_auto_is_one_process_per_core() -> None:
    assert auto_processes("auto") == (os.cpu_count() or 1)
    assert auto_processes("3") == 3


@pytest.mark.parametrize("store", ["filesystem", "memory"])
def test_a_store_of_one_process_refuses_more(store: str) -> None:
    with pytest.raises(ConfigError, match=f"the {store} store belongs to one process"):
        load_config(env={}, overrides={("storage", "key_store"): store,
                                       ("server", "processes"): 2})


def test_sqlite_allows_several_and_the_range_is_checked() -> None:
    config = load_config(env={}, overrides={("storage", "key_store"): "sqlite",
                                            ("server", "processes"): 4})
    assert config.server.processes == 4
    with pytest.raises(ConfigError, match="processes"):
        load_config(env={}, overrides={("storage", "key_store"): "sqlite",
                                       ("server", "processes"): 0})


def test_split_knowledge_unseal_refuses_more_than_one_process() -> None:
    """Shares given to one process behind the shared port would unseal that one only (the
    others stay sealed, or each holds part of the threshold): refused before anything starts."""
    with pytest.raises(ConfigError, match="cannot start sealed") as refused:
        load_config(env={}, overrides={("storage", "key_store"): "sqlite",
                                       ("server", "processes"): 2,
                                       ("secrets", "unseal"): "shamir"})
    assert "unseal each node at its own address" in refused.value.message
    one = load_config(env={}, overrides={("storage", "key_store"): "sqlite",
                                         ("secrets", "unseal"): "shamir"})
    assert one.server.processes == 1


def test_serve_says_why_at_start_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--processes", "2", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "[server].processes = 2" in err and "filesystem store belongs to one process" in err
    assert main(["serve", "--processes", "many", "--key-store", "sqlite"]) == 2
    assert "--processes" in capsys.readouterr().err


def test_children_are_pinned_one_core_each_unless_they_outnumber_the_cores() -> None:
    from ferrohsm.cli.nodes import cores_for
    allowed = sorted(os.sched_getaffinity(0))
    assert cores_for(len(allowed), True) == allowed
    assert cores_for(1, True) == allowed[:1]
    assert cores_for(len(allowed) + 1, True) == []  # more children than cores: the kernel decides
    assert cores_for(len(allowed), False) == []


def test_a_second_group_cannot_take_a_port_a_group_holds() -> None:
    """SO_REUSEPORT would let a second group of the same user join the port silently: the
    reservation refuses it, and a plain listener, while the first group still holds it."""
    import errno
    import socket

    from ferrohsm.cli.nodes import reserve_port
    first, held = reserve_port(load_config(None, overrides={("server", "listen"): "127.0.0.1:0",
                                                            ("storage", "key_store"): "sqlite"}))
    try:
        port = first.server.listen.rpartition(":")[2]
        second = load_config(None, overrides={("server", "listen"): f"127.0.0.1:{port}",
                                              ("storage", "key_store"): "sqlite"})
        with pytest.raises(OSError) as refused:
            reserve_port(second)
        assert refused.value.errno == errno.EADDRINUSE
    finally:
        for sock in held:
            sock.close()
    _, again = reserve_port(second)  # released with the first group: free again
    for sock in again:
        sock.close()
    with socket.create_server(("127.0.0.1", 0)) as busy:  # something already serves the port
        taken = load_config(None, overrides={("server", "listen"):
                                             f"127.0.0.1:{busy.getsockname()[1]}"})
        with pytest.raises(OSError):
            reserve_port(taken)


@pytest.mark.parametrize("code", [2, 4])
def test_a_child_that_cannot_start_stops_the_group_with_its_code(code: int) -> None:
    """2 (configuration) and 4 (cannot listen) cannot be cured by starting it again."""
    from ferrohsm.cli.nodes import Supervisor
    supervisor = Supervisor(2, lambda index: code if index == 0 else _wait_for_term(), 1.0)
    supervisor.start()
    assert supervisor.run() == code
    assert not any(slot.restarts for slot in supervisor.slots)


def test_a_failure_before_any_child_served_stops_the_group_instead_of_looping() -> None:
    """A database it cannot reach at start (exit 1): the group exits 1 as one ``serve`` does."""
    from ferrohsm.cli.nodes import Supervisor
    supervisor = Supervisor(2, lambda index: 1 if index == 0 else _wait_for_term(), 1.0)
    supervisor.start()
    assert supervisor.run(ready=lambda: False) == 1
    assert not any(slot.restarts for slot in supervisor.slots)


def test_a_failure_after_the_group_served_is_restarted() -> None:
    import signal
    import threading
    import time

    from ferrohsm.cli.nodes import Supervisor

    def child(index: int) -> int:
        if index == 0:
            time.sleep(0.5)  # serving a while, then a crash
            return 1
        return _wait_for_term()
    supervisor = Supervisor(2, child, 1.0)
    supervisor.start()

    def stop_after_a_restart() -> None:
        deadline = time.monotonic() + 20
        while not supervisor.slots[0].restarts and time.monotonic() < deadline:
            time.sleep(0.05)
        supervisor._pending_signals.append(signal.SIGTERM)
    threading.Thread(target=stop_after_a_restart, daemon=True).start()
    assert supervisor.run() == 0
    assert supervisor.slots[0].restarts >= 1


def _wait_for_term() -> int:
    import signal
    import time
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    time.sleep(30)
    return 1


@pytest.mark.parametrize(("env", "expected"), [
    ({"FERROHSM_SERVER_PIN_CPU": "0"}, "others"),
    ({"FERROHSM_SERVER_PIN_CPU": "0", "FERROHSM_AUDIT_FSYNC_ELSEWHERE": "false"}, "none"),
    ({}, "none"),  # not pinned: the scheduler places the worker
    ({"FERROHSM_SERVER_PROCESSES": "2", "FERROHSM_KEY_STORE": "sqlite"}, "none"),  # all serve
])
def test_a_server_pinned_to_one_core_has_its_fsyncs_run_on_the_others(
        env: dict[str, str], expected: str) -> None:
    others = frozenset(range(os.cpu_count() or 1)) - {0}
    assert fsync_cores(load_config(None, env=env)) == (others if expected == "others"
                                                       else frozenset())


def test_the_last_child_serving_is_restarted_after_the_first_backoff_unless_it_died_young(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Children killed in turn grew their back-offs to 8 s; once both were down, nothing
    listened on the port for seconds (an acceptance tester). The last child serving comes back
    after the first back-off when it had served a while; one that dies young keeps its grown
    back-off (a red team: a crash loop spun at two starts a second), and the log says the
    delay that applies."""
    import logging

    from ferrohsm.cli import nodes

    supervisor = nodes.Supervisor(2, lambda index: 0, 1.0)
    supervisor.served = True
    supervisor.slots[0] = nodes.Slot(pid=0, backoff=8.0, restart_at=108.0)  # waiting its turn
    supervisor.slots[1] = nodes.Slot(pid=4242, started=90.0, backoff=4.0)
    with caplog.at_level(logging.WARNING, logger=nodes.log.name):
        supervisor._exited(1, supervisor.slots[1], -9, 100.0)  # served 10 s: the last one
    assert supervisor.slots[1].restart_at == 100.0 + nodes.FIRST_BACKOFF
    assert "restarting it in 0.5 s (no other process is serving)" in caplog.text
    supervisor.slots[1] = nodes.Slot(pid=4343, started=100.5, backoff=8.0)
    supervisor._exited(1, supervisor.slots[1], -9, 101.0)  # died young: a start that fails
    assert supervisor.slots[1].restart_at == 101.0 + 16.0
