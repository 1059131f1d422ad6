"""Failover of the SDK and the CLI over several server URLs (``FERROHSM_URL`` a comma list).

A real server, a port nobody listens on (connection refused: nothing was sent), and a TLS server
that completes the handshake, reads the request and hangs up without answering (the request WAS
sent). Idempotent calls move on to the next URL in both cases; a state change moves on only when
nothing was sent; an HTTP answer never moves a call.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from live import LiveServer
from test_cli import Cli

from ferrohsm.client import Client, NotFound, TransportError
from ferrohsm.tls.context import server_context


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("failover"))
    yield server
    server.close()


def dead_port() -> int:
    """A port that refuses connections: bound, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HangUp:
    """TLS server that reads a request and closes without answering; counts the requests."""

    def __init__(self, live: LiveServer) -> None:
        self.ctx = server_context(live.pki.server_cert, live.pki.server_key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.requests = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(5)
                    if tls.recv(65536):
                        self.requests += 1
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.sock.close()


def client(live: LiveServer, *ports: int) -> Client:
    urls = ",".join(f"https://127.0.0.1:{p}" for p in ports)
    return Client(urls, live.token("administrator"), ca_cert=str(live.pki.ca_cert), retries=0)


def test_every_call_moves_on_when_a_server_refuses_connections(live: LiveServer) -> None:
    with client(live, dead_port(), live.port) as hsm:
        key = hsm.create_key("aes-256-gcm", "encrypt")  # nothing was sent: safe to move on
        assert hsm.url.endswith(f":{live.port}")
        assert hsm.get_key(key["id"])["id"] == key["id"]


def test_idempotent_calls_move_on_after_a_sent_request_and_state_changes_do_not(
        live: LiveServer) -> None:
    admin = client(live, live.port)
    key = admin.create_key("aes-256-gcm", "encrypt")
    hang = HangUp(live)
    try:
        with client(live, hang.port, live.port) as hsm:
            assert hsm.get_key(key["id"])["id"] == key["id"]  # GET: resent to the next URL
            assert hang.requests == 1 and hsm.url.endswith(f":{live.port}")
        with client(live, hang.port, live.port) as hsm:
            with pytest.raises(TransportError) as caught:
                hsm.rotate_key(key["id"])  # may have run: never repeated
            assert caught.value.sent and hang.requests == 2
            assert admin.get_key(key["id"])["primary_version"] == 1
            assert hsm.url.endswith(f":{live.port}")  # the next call starts on the next URL
            assert hsm.rotate_key(key["id"])["primary_version"] == 2
    finally:
        hang.close()
        admin.close()


def test_a_server_that_never_finishes_the_handshake_costs_seconds_not_the_timeout(
        live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung node (SIGSTOPped: the kernel still accepts its connections) made each call wait
    the whole 30 s timeout before the next URL (an acceptance tester). With other servers to
    try, connecting and the handshake get CONNECT_TIMEOUT; the answer keeps the timeout."""
    import time

    from ferrohsm import client as sdk
    monkeypatch.setattr(sdk, "CONNECT_TIMEOUT", 0.5)
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never speaks TLS
    try:
        with client(live, silent.getsockname()[1], live.port) as hsm:
            started = time.monotonic()
            assert hsm.list_keys() is not None
            assert time.monotonic() - started < 5 and hsm.url.endswith(f":{live.port}")
            assert hsm.timeout == 30.0
    finally:
        silent.close()


def test_the_last_server_left_gets_the_whole_timeout_to_connect(
        live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A red team on the change above: two slow but healthy servers (a handshake over a slow
    link) both failed within the cap, where one URL alone succeeded. The server tried last,
    when every other one failed, connects with the whole timeout."""
    import time

    from ferrohsm import client as sdk
    monkeypatch.setattr(sdk, "CONNECT_TIMEOUT", 0.3)
    slow = SlowProxy(live.port, delay=0.8)
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        with client(live, silent.getsockname()[1], slow.port) as hsm:
            started = time.monotonic()
            assert hsm.list_keys() is not None  # the silent one capped, the slow one waited for
            assert time.monotonic() - started < 5 and hsm.url.endswith(f":{slow.port}")
    finally:
        silent.close()
        slow.close()


def test_a_server_that_failed_in_an_earlier_call_does_not_make_this_one_wait(
        live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A red team on the rule above: a server that failed once stayed "unreachable" for the
    client's lifetime, so the other one, hung, got the whole timeout in every later call.
    Only this attempt's failures count."""
    import time

    from ferrohsm import client as sdk
    monkeypatch.setattr(sdk, "CONNECT_TIMEOUT", 0.3)
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        with client(live, live.port, silent.getsockname()[1]) as hsm:
            hsm.timeout = 20.0
            hsm.unreachable[hsm.urls[0]] = "failed an hour ago"
            hsm._use(1)  # the hung one first, as after an earlier failover
            started = time.monotonic()
            assert hsm.list_keys() is not None
            assert time.monotonic() - started < 5 and hsm.url.endswith(f":{live.port}")
    finally:
        silent.close()


class SlowProxy:
    """Forwards to ``port`` after holding each new connection ``delay`` seconds (a slow link
    during the handshake)."""

    def __init__(self, port: int, delay: float) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port, self._target, self._delay = self.sock.getsockname()[1], port, delay
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                near, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(near,), daemon=True).start()

    def _pipe(self, near: socket.socket) -> None:
        import time
        time.sleep(self._delay)
        far = socket.create_connection(("127.0.0.1", self._target))
        for a, b in ((near, far), (far, near)):
            threading.Thread(target=_copy, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self.sock.close()


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_an_http_answer_never_moves_a_call(live: LiveServer) -> None:
    with client(live, live.port, dead_port()) as hsm:
        with pytest.raises(NotFound):
            hsm.get_key("no-such-key")
        assert hsm.url.endswith(f":{live.port}")


def test_every_server_down_is_one_clear_error(live: LiveServer) -> None:
    first, second = dead_port(), dead_port()
    with client(live, first, second) as hsm:
        with pytest.raises(TransportError) as caught:
            hsm.list_keys()
        message = caught.value.message
        assert message.startswith("cannot reach any of the 2 servers (")
        assert f":{first}: " in message and f":{second}: " in message, message  # each, why


def test_bad_url_in_the_list_is_refused(live: LiveServer) -> None:
    with pytest.raises(ValueError, match="https://HOST"):
        Client(f"https://127.0.0.1:{live.port},http://plain:80", "t")
    with pytest.raises(ValueError, match="must not hold a user or password") as userinfo:
        Client(f"https://user:hunter2@127.0.0.1:{live.port}", "t")
    assert "hunter2" not in str(userinfo.value) and "user" not in str(userinfo.value).split(
        "got")[1]
    with pytest.raises(ValueError, match="query or fragment"):
        Client(f"https://127.0.0.1:{live.port}/?x=1", "t")
    # the API's path given as the server's was taken as a proxy prefix: every call a 404
    with pytest.raises(ValueError, match="drop the /v1"):
        Client(f"https://127.0.0.1:{live.port}/v1/", "t")
    assert Client(f"https://127.0.0.1:{live.port}/ferrohsm", "t").urls  # a proxy's prefix


def test_cli_takes_a_comma_separated_ferrohsm_url(live: LiveServer, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    cli = Cli(live, monkeypatch, tmp_path)
    monkeypatch.setenv("FERROHSM_URL", f"https://127.0.0.1:{dead_port()},https://127.0.0.1:{live.port}")
    listed = cli("keys", "list", "--json")
    assert listed.code == 0, listed.err
    created = cli("keys", "create", "--algorithm", "aes-256-gcm", "--usage", "encrypt", "--json")
    assert created.code == 0, created.err


def test_cli_says_a_sent_state_change_may_have_run_and_was_not_repeated(
        live: LiveServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cli = Cli(live, monkeypatch, tmp_path)
    hang = HangUp(live)
    try:
        monkeypatch.setenv("FERROHSM_URL",
                           f"https://127.0.0.1:{hang.port},https://127.0.0.1:{live.port}")
        created = cli("keys", "create", "--algorithm", "aes-256-gcm", "--usage", "encrypt")
        assert created.code == 1 and hang.requests == 1
        lines = created.err.strip().splitlines()
        assert len(lines) == 1 and "cannot reach" not in lines[0], created.err
        assert f"request sent to https://127.0.0.1:{hang.port}" in lines[0]
        assert "may or may not have been carried out" in lines[0]
        assert "not repeated nor sent to the next server, because it changes state" in lines[0]
        monkeypatch.setenv("FERROHSM_URL", f"https://127.0.0.1:{hang.port}")
        alone = cli("keys", "create", "--algorithm", "aes-256-gcm", "--usage", "encrypt")
        assert alone.code == 1 and "not repeated, because it changes state" in alone.err
        approval = "0190a2b3-c4d5-7e6f-8a9b-0c1d2e3f4a5b"  # a redeemed approval may be spent
        redeemed = cli("keys", "rotate", "k", "--approval-id", approval)
        assert redeemed.code == 1 and f"approval {approval} may be spent" in redeemed.err
        assert f"ferrohsm approvals show {approval}" in redeemed.err
    finally:
        hang.close()
