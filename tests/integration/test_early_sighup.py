"""SIGHUP while a server is still starting (cli/earlyhup.py): a `systemctl reload` or a
renewal hook during a cold start, or while a child of ``processes = 2`` is (re)starting, is
done once the server can reload. It killed the process (exit 129), or the starting child again
and again, its restart delay doubling, before the hold existed."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from live import reap
from procstatus import catches_sighup

from ferrohsm.tls.context import client_context

ROOT = Path(__file__).resolve().parents[2]


def hup_until_ready(proc: subprocess.Popen[str], data: Path) -> dict[str, str]:
    """SIGHUP every 20 ms from the moment quickstart makes its data directory (its first
    step: the runtime, the audit log's walk and the listening socket come after) until it
    prints its export lines (the server answers), and a little longer."""
    while not data.exists():
        assert proc.poll() is None
        time.sleep(0.002)
    assert catches_sighup(proc.pid)  # held from the start, not only once it serves
    exports: dict[str, str] = {}
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        while len(exports) < 3:
            line = proc.stdout.readline()
            if not line:
                return
            name, _, value = line.strip().removeprefix("export ").partition("=")
            exports[name] = value
        ready.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not ready.is_set() and time.monotonic() < deadline and proc.poll() is None:
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.02)
    for _ in range(25):  # and while the second child starts, with processes = 2
        if proc.poll() is None:
            proc.send_signal(signal.SIGHUP)
        time.sleep(0.02)
    assert proc.poll() is None, f"the server ended with {proc.returncode}"
    assert ready.is_set(), "the server never became ready"
    return exports


@pytest.mark.parametrize("extra", [[], ["--key-store", "sqlite", "--processes", "2"]],
                         ids=["one-process", "two-processes"])
def test_reloads_during_start_up_are_done_not_fatal(tmp_path: Path, extra: list[str]) -> None:
    stderr = open(tmp_path / "stderr.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "ferrohsm", "quickstart", "--data-dir",
                             str(tmp_path / "data"), "--listen", "127.0.0.1:0", *extra],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=stderr,
                            env={k: v for k, v in os.environ.items()
                                 if not k.startswith("FERROHSM_")})
    try:
        exports = hup_until_ready(proc, tmp_path / "data")
        time.sleep(3)  # a child killed would be restarted after 0.5 s and logged
        host, _, port = exports["FERROHSM_URL"].removeprefix("https://").rpartition(":")
        ctx = client_context(exports["FERROHSM_CA_CERT"])
        for _ in range(4):  # both children, when there are two (connections spread)
            conn = http.client.HTTPSConnection(host, int(port), timeout=10, context=ctx)
            conn.request("GET", "/v1/keys",
                         headers={"Authorization": f"Bearer {exports['FERROHSM_TOKEN']}"})
            assert conn.getresponse().status == 200
            conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        stderr.seek(0)
        log = stderr.read()
        assert "killed by signal" not in log and "restarting it" not in log, log
        assert "SIGHUP" in log  # the reloads were done (each says what it checked)
    finally:
        reap(proc)
        stderr.close()


SPY = """
import signal, sys
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "ferrohsm.cli.main":  # the CLI's import, then the app's: most of a second
            held = signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, None)
            print("held" if held else "not held", flush=True)
            import os
            os._exit(0)
sys.meta_path.insert(0, Spy())
sys.argv = ["ferrohsm", sys.argv[1]]
import ferrohsm.__main__ as entry
entry.run()
"""


@pytest.mark.parametrize("command", ["serve", "quickstart"])
def test_the_hold_comes_before_the_cli_and_the_app_are_imported(command: str) -> None:
    """A SIGHUP 0.05-0.7 s after `serve` started killed it (129, nothing logged): the hold
    came only after the CLI's and the server's imports (an outside tester)."""
    result = subprocess.run([sys.executable, "-c", SPY, command], cwd=ROOT, text=True,
                            capture_output=True, timeout=60)
    assert result.stdout.strip() == "held", result.stderr
    client = subprocess.run([sys.executable, "-c", SPY, "keys"], cwd=ROOT, text=True,
                            capture_output=True, timeout=60)
    assert client.stdout.strip() == "not held"  # a client command keeps the default


def test_a_sighup_noted_by_the_launcher_is_carried_over(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    from ferrohsm.cli import earlyhup
    previous = signal.getsignal(signal.SIGHUP)
    monkeypatch.setenv(earlyhup.LAUNCHER_NOTED, "1")
    delivered: list[int] = []
    signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a new process (another test may hold it)
    try:
        earlyhup.hold()
        assert earlyhup.LAUNCHER_NOTED not in os.environ  # taken, not passed to children
        earlyhup.hold()  # the server's own hold later: what was noted stays noted
        earlyhup.install(lambda signum, frame: delivered.append(signum))
        assert delivered == [signal.SIGHUP]
    finally:
        signal.signal(signal.SIGHUP, previous)
