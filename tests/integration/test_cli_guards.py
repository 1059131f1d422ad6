"""An outside tester's CLI round through the real executable against a real server: a flag
given twice with different values, an --out that is the input file, empty client flags, a
token given where a token file goes, and an answer of the wrong shape from another server."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from clikit import create, one_line
from live import LiveServer
from test_cli_habits import Cli, all_records

pytestmark = pytest.mark.slow  # a new process per command


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("cli-guards"))
    yield server
    server.close()


@pytest.fixture
def cli(live: LiveServer, tmp_path: Path) -> Cli:
    return Cli(live, tmp_path)


def test_a_flag_given_twice_with_different_values_is_refused(cli: Cli, tmp_path: Path) -> None:
    key = create(cli, "ec-p256", "sign")
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(b"a" * 100)
    second.write_bytes(b"b" * 100)
    run = cli("sign", key, "--in", str(first), "--in", str(second), "--out", str(tmp_path / "s"))
    assert run.code == 2 and "--in given twice with different values" in run.err
    assert not (tmp_path / "s").exists()
    run = cli("keys", "create", "--algorithm", "aes-256-gcm", "--algorithm", "ec-p256",
              "--usage", "sign")
    assert run.code == 2 and "--algorithm given twice" in run.err
    token = cli.live.token("administrator")
    run = cli("whoami", "--token", token, "--token", token + "x")
    assert run.code == 2 and token not in run.err  # a token is never echoed
    same = cli("sign", key, "--in", str(first), "--in", str(first), "--out", str(tmp_path / "s"),
               role="service")
    assert same.code == 0, same.err  # the same value twice is taken


@pytest.mark.parametrize("command", ["sign", "encrypt"])
def test_an_out_naming_the_input_file_is_refused_before_anything_is_sent(
        cli: Cli, tmp_path: Path, command: str) -> None:
    key = create(cli, "ec-p256", "sign") if command == "sign" else \
        create(cli, "aes-256-gcm", "encrypt")
    artefact = tmp_path / "app.tar.gz"
    artefact.write_bytes(b"artefact" * 1_000)
    link = tmp_path / "link"
    link.symlink_to(artefact)
    before = len(all_records(cli.live))
    for out in (artefact, link):
        run = cli(command, key, "--in", str(artefact), "--out", str(out), role="service")
        assert run.code == 2, run.err
        assert "--out names the same file as --in" in one_line(run)
        assert artefact.read_bytes() == b"artefact" * 1_000
    assert len(all_records(cli.live)) == before  # nothing reached the server
    assert cli(command, key, "--in", str(artefact), "--out", "/dev/null",
               role="service").code == 0


def test_a_verify_out_naming_the_signature_is_refused(cli: Cli, tmp_path: Path) -> None:
    key = create(cli, "ec-p256", "sign")
    data, signature = tmp_path / "data", tmp_path / "data.sig"
    data.write_bytes(b"data")
    assert cli("sign", key, "--in", str(data), "--out", str(signature), role="service").code == 0
    run = cli("verify", key, "--in", str(data), "--signature", str(signature),
              "--out", str(signature), role="service")
    assert run.code == 2 and "same file as --signature" in run.err


@pytest.mark.parametrize("flag", ["--token", "--token-file", "--server", "--ca-cert"])
def test_an_empty_client_flag_is_refused_not_taken_for_absent(cli: Cli, flag: str) -> None:
    """`--token "$SERVICE_TOKEN"` with the variable unset ran as the administrator whose
    token FERROHSM_TOKEN held."""
    run = cli("whoami", flag, "")
    assert run.code == 2 and f"{flag} is empty" in one_line(run), run.err


def test_a_token_given_as_the_token_file_is_not_echoed(cli: Cli) -> None:
    token = cli.live.token("administrator")
    for run in (cli("whoami", "--token-file", token, role=None),
                cli("whoami", role=None, env={"FERROHSM_TOKEN_FILE": token})):
        assert run.code == 2
        assert token not in run.err and token[:40] not in run.err
        assert "looks like a token, not a path" in one_line(run)


@pytest.fixture
def foreign(live: LiveServer) -> Iterator[str]:
    """Another HTTPS server (the same certificate), answering JSON of another shape."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"keys": 5, "approvals": "z", "id": [], "name": {}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(live.pki.server_cert, live.pki.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("argv", [["keys", "list"], ["keys", "show", "x"],
                                  ["approvals", "list"]])
def test_an_answer_of_another_shape_is_said_as_such(cli: Cli, foreign: str,
                                                    argv: list[str]) -> None:
    run = cli(*argv, "--server", foreign)
    assert run.code == 1, run.err
    assert "not shaped as a FerroHSM answer" in one_line(run) and "unexpected" not in run.err
