"""A server certificate the client cannot verify is reported as that, not as a server that
cannot be reached, and never makes the client try the next server in the list."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from live import LiveServer
from test_cli import Cli

from ferrohsm.client import Client, TransportError
from ferrohsm.tls.devpki import make_dev_pki


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("client-tls"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dev_pki(tmp_path_factory.mktemp("other-pki")).ca_cert


def test_the_sdk_names_the_certificate_and_does_not_move_on(live: LiveServer,
                                                             other_ca: Path) -> None:
    url = f"https://127.0.0.1:{live.port}"
    with Client(f"{url},{url}", live.token("administrator"), ca_cert=str(other_ca),
                retries=0) as hsm:
        with pytest.raises(TransportError) as failed:
            hsm.list_keys()
    assert "cannot verify the server certificate" in failed.value.message
    assert "check --ca-cert" in failed.value.message
    assert failed.value.retryable is False and failed.value.sent is False


def test_the_cli_says_check_ca_cert(live: LiveServer, other_ca: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = Cli(live, monkeypatch, tmp_path)("whoami", "--ca-cert", str(other_ca))
    assert out.code != 0
    assert "cannot verify the server certificate" in out.err, out.err
    assert "Bad file descriptor" not in out.err
