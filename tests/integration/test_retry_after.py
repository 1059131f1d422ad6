"""The SDK and the CLI honour Retry-After on 429 for idempotent calls, and only for those.

A live server with a tiny per-actor limit (1 request/s, burst 2): once the bucket is empty, a GET
and a cryptographic operation succeed after waiting for the Retry-After the 429 carried; key
creation (not idempotent) surfaces the 429 at once; the bound on the total wait holds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from live import LiveServer
from test_cli import Cli

from ferrohsm.client import Client, RateLimited

TINY = {("rate_limit", "requests_per_second"): 1.0, ("rate_limit", "burst"): 2}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("retry"), overrides=TINY)
    yield server
    server.close()


def client(live: LiveServer, role: str = "administrator", **kw: float) -> Client:
    return Client(f"https://127.0.0.1:{live.port}", live.token(role),
                  ca_cert=str(live.pki.ca_cert), **kw)  # type: ignore[arg-type]


def empty_bucket(hsm: Client) -> None:
    """Spend the actor's tokens until the server answers 429 (no retries on this client)."""
    for _ in range(10):
        try:
            hsm.request("GET", "/v1/keys", idempotent=False)
        except RateLimited as exc:
            assert exc.status == 429 and exc.retry_after is not None and exc.retry_after >= 1
            return
    raise AssertionError("never rate limited")


def test_sdk_retries_idempotent_calls_after_429_and_not_key_creation(live: LiveServer) -> None:
    time.sleep(2.5)  # a full bucket
    with client(live) as hsm, client(live, retries=0) as raw:
        key = hsm.create_key("aes-256-gcm", "encrypt")["id"]
        empty_bucket(raw)
        start = time.monotonic()
        assert hsm.get_key(key)["id"] == key  # a GET: waited for Retry-After, then succeeded
        assert time.monotonic() - start >= 0.9
    with client(live, "service") as service, client(live, "service", retries=0) as raw:
        empty_bucket(raw)
        start = time.monotonic()
        sealed = service.encrypt(key, b"pay me")  # a crypto operation is repeatable
        assert sealed["ciphertext"] and time.monotonic() - start >= 0.9
    with client(live) as hsm, client(live, retries=0) as raw:
        empty_bucket(raw)
        start = time.monotonic()
        with pytest.raises(RateLimited) as caught:  # creation is not idempotent: no retry
            hsm.create_key("aes-256-gcm", "encrypt")
        assert caught.value.status == 429 and caught.value.retry_after is not None
        assert time.monotonic() - start < 0.5


def test_sdk_total_wait_is_bounded(live: LiveServer) -> None:
    time.sleep(2.5)
    with client(live, max_retry_wait=0.5) as hsm, client(live, retries=0) as raw:
        empty_bucket(raw)
        start = time.monotonic()
        with pytest.raises(RateLimited):  # Retry-After (1 s) is over the budget: no sleep
            hsm.list_keys()
        assert time.monotonic() - start < 0.5


def test_cli_honours_retry_after(live: LiveServer, monkeypatch: pytest.MonkeyPatch,
                                 tmp_path: Path) -> None:
    time.sleep(2.5)
    cli = Cli(live, monkeypatch, tmp_path)
    with client(live, retries=0) as raw:
        empty_bucket(raw)
        listed = cli("keys", "list", "--json")
        assert listed.code == 0, listed.err  # waited, then listed
        empty_bucket(raw)
        created = cli("keys", "create", "--algorithm", "aes-256-gcm", "--usage", "encrypt")
        assert created.code == 1 and "rate_limited" in created.err, created.err
        assert "Bearer" not in created.err and live.token("administrator") not in created.err


def test_a_read_with_an_approval_id_is_sent_once(live: LiveServer) -> None:
    """``keys public-key --approval-id``: a GET that spends an approval runs exactly once, so
    the SDK never repeats it (a repeat found the approval executed and failed a read that
    had run)."""
    import uuid
    time.sleep(2.5)  # a full bucket
    with client(live) as hsm, client(live, retries=0) as raw:
        key = hsm.create_key("ec-p256", "sign")["id"]
        empty_bucket(raw)
        start = time.monotonic()
        with pytest.raises(RateLimited):
            hsm.public_key(key, approval_id=str(uuid.uuid4()))
        assert time.monotonic() - start < 0.8  # the 429 at once, no wait for Retry-After
