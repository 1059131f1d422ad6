"""A server certificate the client cannot verify is reported as that, not as a server that
cannot be reached; the client moves on to the next server of its list (each one is verified on
its own, so a node with a wrong or expired certificate is not an outage) but never tries the
same server again."""

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


def test_the_sdk_names_the_certificate_and_does_not_retry_it(live: LiveServer,
                                                               other_ca: Path) -> None:
    url = f"https://127.0.0.1:{live.port}"
    with Client(url, live.token("administrator"), ca_cert=str(other_ca)) as hsm:
        with pytest.raises(TransportError) as failed:
            hsm.list_keys()
    assert "cannot verify the server certificate" in failed.value.message
    assert "--ca-cert" in failed.value.message
    assert failed.value.retryable is False and failed.value.sent is False


def test_a_node_whose_certificate_fails_is_passed_over_for_the_next(
        live: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The first node's certificate comes from another CA: the call goes on to the second,
    which this CA does vouch for, and the first is named among the nodes that failed."""
    other = LiveServer(tmp_path_factory.mktemp("other-node"))
    try:
        bad, good = f"https://127.0.0.1:{other.port}", f"https://127.0.0.1:{live.port}"
        with Client(f"{bad},{good}", live.token("administrator"),
                    ca_cert=str(live.pki.ca_cert)) as hsm:
            assert "keys" in hsm.list_keys()
            assert hsm.url == good
            assert "cannot verify the server certificate" in hsm.unreachable[bad]
    finally:
        other.close()


def test_the_cli_says_check_ca_cert(live: LiveServer, other_ca: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = Cli(live, monkeypatch, tmp_path)("whoami", "--ca-cert", str(other_ca))
    assert out.code != 0
    assert "cannot verify the server certificate" in out.err, out.err
    assert "Bad file descriptor" not in out.err
