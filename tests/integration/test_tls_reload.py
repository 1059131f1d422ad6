"""PEM mode, finished: a changed pair reaches new handshakes while established connections keep
theirs; a broken pair (each kind) is refused with a warning and an audit record; cert and key
may be replaced in either order; SIGHUP reloads at once in a real ``ferrohsm`` process."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from certkit import HOSTS, Leaf, TestCA, install, now, served_certificate, wait_for, write_atomic
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from test_serve_process import call, start, stop
from tlsserver import TlsServer, answered

from ferrohsm.tls.context import ReloadingContext

POLL = 0.1


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    live = tmp_path / "live"
    live.mkdir()
    return live / "server.pem", live / "server-key.pem"


@pytest.fixture
def first(ca: TestCA, files: tuple[Path, Path]) -> Leaf:
    leaf = ca.leaf()
    install(leaf, *files)
    return leaf


@pytest.fixture
def server(tmp_path: Path, ca: TestCA, files: tuple[Path, Path], first: Leaf
           ) -> Iterator[TlsServer]:
    srv = TlsServer(tmp_path, *files, ca.cert_file, reload_seconds=POLL)
    yield srv
    srv.close()


def serial_served(srv: TlsServer) -> int:
    return served_certificate(srv.port).serial_number


def test_keep_alive_connection_survives_a_reload_and_new_ones_get_the_new_pair(
        server: TlsServer, ca: TestCA, files: tuple[Path, Path], first: Leaf) -> None:
    held = server.connect()
    assert server.get(held, "/healthz")[0] == 200
    second = ca.leaf()
    install(second, *files)
    wait_for(lambda: serial_served(server) == second.cert.serial_number, 10, "the new pair")
    for _ in range(3):  # the held connection keeps working, on the pair it began with
        assert server.get(held, "/healthz")[0] == 200
    assert held.sock is not None
    assert held.sock.getpeercert(binary_form=True) == first.cert.public_bytes(Encoding.DER)
    held.close()
    tls = server.health()["tls"]  # public: a certificate is no secret
    assert tls["serial"] == second.serial and tls["ocsp"] == "off" and tls["mode"] == "pem"
    assert tls["not_after"] == second.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    expiry = server.metric("ferrohsm_tls_certificate_expiry_timestamp_seconds")
    assert expiry and float(expiry[0].split()[-1]) == second.cert.not_valid_after_utc.timestamp()
    assert 'ferrohsm_tls_ocsp_status{status="off"} 1' in "\n".join(
        server.metric("ferrohsm_tls_ocsp_status"))
    reloaded = server.events("tls.reloaded")
    assert len(reloaded) == 1 and reloaded[0]["outcome"] == "success"
    assert reloaded[0]["details"]["previous_serial"] == first.serial
    assert reloaded[0]["details"]["serial"] == second.serial


def _garbage(ca: TestCA, first: Leaf) -> tuple[bytes, bytes]:
    return b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n", first.key_pem


def _key_mismatch(ca: TestCA, first: Leaf) -> tuple[bytes, bytes]:
    return ca.leaf().chain_pem, first.key_pem


def _expired(ca: TestCA, first: Leaf) -> tuple[bytes, bytes]:
    leaf = ca.leaf(not_before=now() - dt.timedelta(days=3), not_after=now() - dt.timedelta(days=1))
    return leaf.chain_pem, leaf.key_pem


def _not_yet_valid(ca: TestCA, first: Leaf) -> tuple[bytes, bytes]:
    leaf = ca.leaf(not_before=now() + dt.timedelta(days=1), not_after=now() + dt.timedelta(days=3))
    return leaf.chain_pem, leaf.key_pem


def _names(ca: TestCA, first: Leaf) -> tuple[bytes, bytes]:
    leaf = ca.leaf(names=("127.0.0.1",))  # lost "localhost"
    return leaf.chain_pem, leaf.key_pem


def _cut_chain(ca: TestCA, first: Leaf) -> tuple[bytes, bytes]:
    """The chain file caught mid-write: its issuer block begun, not ended (the PEM loader
    skips such a block, and the leaf alone would be served)."""
    leaf = ca.leaf()
    end = leaf.chain_pem.index(b"-----END CERTIFICATE-----") + 26
    return leaf.chain_pem[:end + 120], leaf.key_pem


def _self_signed(ca: TestCA, first: Leaf) -> tuple[bytes, bytes]:
    """Same names, no CA: a client that trusts the CA of the served leaf cannot verify it."""
    leaf = ca.leaf(self_signed=True)
    return leaf.chain_pem, leaf.key_pem


def _forged(ca: TestCA, first: Leaf) -> tuple[bytes, bytes]:
    """Names the served CA as issuer and the chain carries that CA, but another key signed."""
    leaf = ca.leaf(signer=ec.generate_private_key(ec.SECP256R1()))
    return leaf.chain_pem, leaf.key_pem


BROKEN: dict[str, tuple[str, Callable[[TestCA, Leaf], tuple[bytes, bytes]]]] = {
    "unparsable": ("unparsable", _garbage), "key_mismatch": ("key_mismatch", _key_mismatch),
    "expired": ("expired", _expired), "not_yet_valid": ("not_yet_valid", _not_yet_valid),
    "names": ("names", _names), "incomplete_chain": ("incomplete_chain", _cut_chain),
    "self_signed": ("untrusted_issuer", _self_signed), "forged": ("untrusted_issuer", _forged)}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_pair_is_refused_and_the_old_one_stays(
        server: TlsServer, ca: TestCA, files: tuple[Path, Path], first: Leaf, case: str,
        caplog: pytest.LogCaptureFixture) -> None:
    kind, make = BROKEN[case]
    cert_pem, key_pem = make(ca, first)
    with caplog.at_level(logging.WARNING, logger="ferrohsm.tls"):
        write_atomic(files[0], cert_pem, 0o644)
        write_atomic(files[1], key_pem)
        wait_for(lambda: server.events("tls.reload_refused"), 10, "the refusal record")
        time.sleep(5 * POLL)  # further polls of the same files: no second warning
    refused = server.events("tls.reload_refused")
    assert len(refused) == 1 and refused[0]["outcome"] == "error"
    assert refused[0]["details"]["reason"] == kind
    assert refused[0]["details"]["serial"] == first.serial
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and r.name == "ferrohsm.tls"]
    assert len(warnings) == 1 and kind in warnings[0], warnings
    assert "PRIVATE KEY" not in warnings[0] and "PRIVATE KEY" not in str(refused[0])
    assert serial_served(server) == first.cert.serial_number
    assert server.health()["tls"]["reload_refused"] == kind
    assert not server.events("tls.reloaded")
    second = ca.leaf()  # a good pair afterwards is taken, and clears the refusal
    install(second, *files)
    wait_for(lambda: serial_served(server) == second.cert.serial_number, 10, "the good pair")
    assert "reload_refused" not in server.health()["tls"]


def test_a_chain_that_lost_its_intermediate_waits_and_a_restored_pair_clears_the_refusal(
        server: TlsServer, ca: TestCA, files: tuple[Path, Path], first: Leaf) -> None:
    """The served chain carries the leaf's issuer; a new chain file that does not yet (only
    the leaf written so far) is refused rather than served to clients that need it. Putting
    the served pair back clears ``reload_refused``."""
    second = ca.leaf()
    write_atomic(files[0], second.chain_pem.split(b"-----END CERTIFICATE-----")[0]
                 + b"-----END CERTIFICATE-----\n", 0o644)
    write_atomic(files[1], second.key_pem)
    wait_for(lambda: server.events("tls.reload_refused"), 10, "the refusal record")
    assert server.events("tls.reload_refused")[0]["details"]["reason"] == "incomplete_chain"
    assert serial_served(server) == first.cert.serial_number
    install(first, *files)  # the operator puts the pair in service back
    wait_for(lambda: "reload_refused" not in server.health()["tls"], 10, "the cleared refusal")
    assert not server.events("tls.reloaded")


def test_a_changed_client_ca_bundle_is_in_force_for_new_handshakes(
        tmp_path: Path, ca: TestCA, files: tuple[Path, Path], first: Leaf) -> None:
    """A CA taken out of [tls] client_ca stops being trusted without a restart."""

    old_ca, new_ca = TestCA(tmp_path / "clients-old"), TestCA(tmp_path / "clients-new")
    bundle = tmp_path / "clients.pem"
    bundle.write_bytes(old_ca.cert_file.read_bytes())
    srv = TlsServer(tmp_path, *files, ca.cert_file, reload_seconds=POLL,
                    client_ca=str(bundle), require_client_cert=True)

    def handshake(client: TestCA) -> bool:
        leaf = client.leaf(("client",), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        return answered(srv, leaf.chain_pem, leaf.key_pem, tmp_path)
    try:
        assert handshake(old_ca) and not handshake(new_ca)
        write_atomic(bundle, new_ca.cert_file.read_bytes(), 0o644)
        wait_for(lambda: srv.events("tls.client_ca_reloaded"), 10, "the new bundle")
        assert handshake(new_ca) and not handshake(old_ca)
        assert serial_served(srv) == first.cert.serial_number  # the pair itself unchanged
    finally:
        srv.close()


@pytest.mark.parametrize("key_first", [False, True])
def test_cert_and_key_replaced_in_either_order(tmp_path: Path, ca: TestCA,
                                               files: tuple[Path, Path], first: Leaf,
                                               key_first: bool) -> None:
    srv = TlsServer(tmp_path, *files, ca.cert_file, reload_seconds=0.5)
    try:
        second = ca.leaf()
        steps = [(files[1], second.key_pem, 0o600), (files[0], second.chain_pem, 0o644)]
        for path, data, mode in steps if key_first else steps[::-1]:
            write_atomic(path, data, mode)
            # the half-replaced pair is never served: the old one is, until both are in
            assert serial_served(srv) == first.cert.serial_number
            time.sleep(0.3)
        wait_for(lambda: serial_served(srv) == second.cert.serial_number, 10, "the new pair")
        assert not srv.events("tls.reload_refused")  # waiting for the other half is no failure
        assert len(srv.events("tls.reloaded")) == 1
    finally:
        srv.close()


def test_a_half_written_file_is_never_served(server: TlsServer, ca: TestCA,
                                             files: tuple[Path, Path], first: Leaf) -> None:
    second = ca.leaf()
    files[1].write_bytes(second.key_pem)
    with files[0].open("wb") as handle:  # in place, in two writes, the way `cp` might
        handle.write(second.chain_pem[:200])
        handle.flush()
        assert serial_served(server) == first.cert.serial_number
        handle.write(second.chain_pem[200:])
    wait_for(lambda: serial_served(server) == second.cert.serial_number, 10, "the new pair")


@pytest.mark.slow
def test_sighup_reloads_at_once_in_a_real_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROHSM_")}
    env["FERROHSM_TLS_RELOAD_SECONDS"] = "3600"  # only SIGHUP can make it look
    proc, exports = start(data, env=env)
    try:
        port = int(exports["FERROHSM_URL"].rpartition(":")[2])
        before = served_certificate(port).serial_number
        other = TestCA(tmp_path / "other").leaf((*HOSTS, "::1"))  # the dev PKI's names
        install(other, data / "tls" / "server.pem", data / "tls" / "server-key.pem")
        time.sleep(0.5)
        assert served_certificate(port).serial_number == before  # not polled for an hour
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: served_certificate(port).serial_number == other.cert.serial_number,
                 10, "the reload on SIGHUP")
    finally:
        # the dev CA no longer vouches for the served certificate: stop without API calls
        assert stop(proc) == 0
    proc, exports = start(data, env=env)  # quickstart reissues its own pair on the dev CA
    try:
        status, page = call(exports, "GET", "/v1/audit?limit=1000")
        assert status == 200
        actions = [record["action"] for record in page["records"]]
        assert "tls.reloaded" in actions
    finally:
        assert stop(proc) == 0


def test_a_self_signed_pair_is_taken_at_start_and_renewed_self_signed(
        ca: TestCA, files: tuple[Path, Path]) -> None:
    """Self-signed is the operator's choice at start-up; only a leaf a CA issued is held to
    being replaced by another leaf a CA issued."""
    install(ca.leaf(self_signed=True), *files)
    provider = ReloadingContext(*files)
    renewed = ca.leaf(self_signed=True)
    install(renewed, *files)
    assert provider.reload("test") and provider.status()["serial"] == renewed.serial
    issued = ca.leaf()
    install(issued, *files)  # and a CA-issued one may follow it
    assert provider.reload("test") and provider.status()["serial"] == issued.serial


def test_a_certificate_dated_seconds_ahead_goes_in_service_once_valid(
        server: TlsServer, ca: TestCA, files: tuple[Path, Path], first: Leaf) -> None:
    """A CA clock a few seconds fast: served at once, every client with the right time would
    refuse it until its notBefore (a 10-minute leeway did that). Refused as not yet valid, it
    is looked at again at each poll and served once it is valid, with no change to the files."""
    ahead = ca.leaf(not_before=now() + dt.timedelta(seconds=3))
    install(ahead, *files)
    wait_for(lambda: server.events("tls.reload_refused"), 10, "the refusal")
    assert serial_served(server) == first.cert.serial_number
    wait_for(lambda: serial_served(server) == ahead.cert.serial_number, 15, "the new pair")


class Clock:
    def __init__(self) -> None:
        self.at = now()

    def __call__(self) -> dt.datetime:
        return self.at


def test_a_refused_pair_is_tried_again_at_each_poll_and_taken_once_it_is_good(
        ca: TestCA, files: tuple[Path, Path], first: Leaf,
        caplog: pytest.LogCaptureFixture) -> None:
    """What refused a pair can pass by without the files changing (its notBefore reached, a
    key made readable by chown): polls look again, and say nothing more until it is taken."""
    clock, heard = Clock(), []
    provider = ReloadingContext(*files, now=clock,
                                notify=lambda event, fields: heard.append((event, dict(fields))))
    later = ca.leaf(not_before=now() + dt.timedelta(days=1), not_after=now() + dt.timedelta(days=9))
    install(later, *files)
    with caplog.at_level(logging.WARNING, logger="ferrohsm.tls"):
        for _ in range(5):
            assert not provider.check()
    assert [(event, fields["reason"]) for event, fields in heard] == [
        ("tls.reload_refused", "not_yet_valid")]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert provider.status()["reload_refused"] == "not_yet_valid"
    clock.at += dt.timedelta(days=1)
    assert provider.check()  # the files are the same, the day has come
    assert provider.status()["serial"] == later.serial
    assert "reload_refused" not in provider.status()
    assert heard[-1][0] == "tls.reloaded" and len(heard) == 2
    assert not provider.check()  # and polls go back to looking at the files only


def test_a_refusal_for_another_reason_is_reported_again(
        ca: TestCA, files: tuple[Path, Path], first: Leaf) -> None:
    clock, heard = Clock(), []
    provider = ReloadingContext(*files, now=clock,
                                notify=lambda event, fields: heard.append((event, dict(fields))))
    brief = ca.leaf(not_before=now() + dt.timedelta(days=1), not_after=now() + dt.timedelta(days=2))
    install(brief, *files)
    assert not provider.check() and not provider.check()
    clock.at += dt.timedelta(days=3)  # its whole life went by before the files were fixed
    assert not provider.check() and not provider.check()
    assert [fields["reason"] for _, fields in heard] == ["not_yet_valid", "expired"]
    assert provider.status()["reload_refused"] == "expired"
