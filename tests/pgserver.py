"""A real, throwaway PostgreSQL server for the tests: ``initdb`` + ``pg_ctl`` in a temporary folder.

No mock of the database anywhere: the PostgreSQL backend is tested against Debian's own server,
started here on a free port on 127.0.0.1 and removed afterwards. PostgreSQL refuses to run as
root, so under root (CI) the cluster is owned by and run as the ``postgres`` system user that
Debian's package creates. Where the binaries are missing, tests skip with the install command,
exactly as the browser tests do.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL_HINT = "apt-get install postgresql (Debian's server: initdb and pg_ctl)"
_SEARCH = ["/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin",
           "/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin"]


def pg_bin(name: str) -> str | None:
    """The path of a PostgreSQL server binary (Debian keeps them out of PATH), or None."""
    for folder in _SEARCH:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def available() -> bool:
    return all(pg_bin(n) for n in ("initdb", "pg_ctl", "postgres"))


def skip_unless_available() -> None:
    if not available():
        pytest.skip(f"needs a PostgreSQL server ({INSTALL_HINT})")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("needs psycopg (python3 -m pip install -e '.[test]')")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_owner(cmd: list[str], user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, trust auth on 127.0.0.1 only."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ferrohsm-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self._databases = 0
        self._schemas = 0
        self._schemas_db: str | None = None

    def start(self) -> None:
        stop_on_sigterm()
        if self.user is not None:
            os.chmod(self.root, 0o700)
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        assert initdb and pg_ctl
        self._run([initdb, "-D", str(self.data), "-U", "ferrohsm", "--auth=trust",
                   "-E", "UTF8", "--no-instructions"])
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c fsync=on "
                   f"-c unix_socket_directories={self.root} -c max_connections=200")
        self._run([pg_ctl, "-D", str(self.data), "-l", str(self.root / "log"), "-w",
                   "-t", "60", "-o", options, "start"])

    def _run(self, cmd: list[str]) -> None:
        done = subprocess.run(_as_owner(cmd, self.user), capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {done.stdout}{done.stderr}")

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://ferrohsm@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database's DSN: each test gets its own, the server is shared."""
        import psycopg

        self._databases += 1
        name = f"t{os.getpid()}_{self._databases}_{int(time.time() * 1000) % 100000}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def restart(self) -> None:
        """Stop the server (dropping every connection) and start it again on the same port."""
        pg_ctl = pg_bin("pg_ctl")
        assert pg_ctl
        self._run([pg_ctl, "-D", str(self.data), "-l", str(self.root / "log"), "-m", "fast", "-w",
                   "-t", "60", "restart"])

    def new_schema(self) -> str:
        """A fresh, empty schema in one shared database, as a DSN whose search_path is that
        schema alone: what a store sees is the same as a fresh database, at ~1 ms instead of the
        ~50 ms a CREATE DATABASE costs with fsync on (the conformance suites make hundreds)."""
        import psycopg

        if self._schemas_db is None:
            self._schemas_db = self.new_database()
        self._schemas += 1
        name = f"s{self._schemas}"
        with psycopg.connect(self._schemas_db, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return f"{self._schemas_db}?options=-csearch_path%3D{name}"

    def stop(self) -> None:
        pg_ctl = pg_bin("pg_ctl")
        if pg_ctl and self.data.exists():
            with contextlib.suppress(Exception):
                self._run([pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


_SHARED: list[PostgresServer] = []


def stop_on_sigterm() -> None:
    """SIGTERM (``timeout 60 python3 -m pytest``, a CI job cancelled) as Ctrl-C: pytest stops,
    tears its fixtures down and runs atexit, so no server is left running. Its default action
    ended the process at once and left the PostgreSQL servers behind (an outside tester)."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def shared() -> PostgresServer:
    """One server for the whole test session (started on first use, stopped at exit), so each
    test pays only for its own database (``new_database``, ~20-40 ms), not for an initdb. Skips
    the calling test when PostgreSQL or psycopg is missing."""
    skip_unless_available()
    if not _SHARED:
        server = PostgresServer()
        atexit.register(server.stop)
        server.start()
        _SHARED.append(server)
    return _SHARED[0]
