"""ACME pieces on their own: JWS signatures, ARI certificate ids (RFC 9773's own example),
backoff and Retry-After, the cache's one account key, the http-01 listener over real HTTP,
the tls-alpn-01 routing over real TLS handshakes, and the [tls.acme] settings."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.client
import json
import random
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ferrohsm.config import load_config
from ferrohsm.domain.errors import ConfigError
from ferrohsm.tls.acme.cache import AcmeCache
from ferrohsm.tls.acme.challenges import (
    ACME_IDENTIFIER_OID,
    Http01Responder,
    TlsAlpnResponder,
    offered_alpn,
)
from ferrohsm.tls.acme.client import AcmeClient, AcmeError, Response, checked, retry_after_seconds
from ferrohsm.tls.acme.jws import AccountKey
from ferrohsm.tls.acme.provider import directory_url
from ferrohsm.tls.acme.renewal import (
    AriWindow,
    ari_cert_id,
    ari_renewal,
    backoff,
    fraction_renewal,
    parse_ari,
    serial_bytes,
)
from ferrohsm.tls.context import server_context
from ferrohsm.tls.devpki import DevPki, make_dev_pki


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ------------------------------------------------------------------ JWS


def test_jws_is_a_verifiable_es256_flattened_jws() -> None:
    key = AccountKey.generate()
    body = json.loads(key.sign({"hello": "acme"}, "https://ca/new-order", "n0nce",
                               "https://ca/acct/1"))
    header = json.loads(unb64(body["protected"]))
    assert header == {"alg": "ES256", "nonce": "n0nce", "url": "https://ca/new-order",
                      "kid": "https://ca/acct/1"}
    assert json.loads(unb64(body["payload"])) == {"hello": "acme"}
    raw = unb64(body["signature"])
    assert len(raw) == 64  # r || s, not DER
    jwk = key.jwk()
    public = ec.EllipticCurvePublicNumbers(int.from_bytes(unb64(jwk["x"]), "big"),
                                           int.from_bytes(unb64(jwk["y"]), "big"),
                                           ec.SECP256R1()).public_key()
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, f"{body['protected']}.{body['payload']}".encode(), ec.ECDSA(hashes.SHA256()))


def test_new_account_jws_carries_the_jwk_and_post_as_get_an_empty_payload() -> None:
    key = AccountKey.generate()
    body = json.loads(key.sign(None, "https://ca/new-acct", "n", None))
    assert body["payload"] == ""
    assert json.loads(unb64(body["protected"]))["jwk"] == key.jwk()
    canonical = json.dumps(key.jwk(), separators=(",", ":"), sort_keys=True).encode()
    assert unb64(key.thumbprint()) == hashlib.sha256(canonical).digest()
    assert key.key_authorization("tok") == f"tok.{key.thumbprint()}"
    assert AccountKey.from_pem(key.to_pem()).jwk() == key.jwk()


# ------------------------------------------------------------------ renewal


def test_ari_cert_id_matches_rfc_9773_example() -> None:
    # RFC 9773 section 4.1: AKI 69:88:5B:..:D4, serial 00:87:65:43:21
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    assert serial_bytes(0x87654321) == bytes.fromhex("0087654321")
    ca = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(ca.public_key()).serial_number(0x87654321)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=90))
            .add_extension(x509.AuthorityKeyIdentifier(aki, None, None), critical=False)
            .sign(ca, hashes.SHA256()))
    assert ari_cert_id(cert) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    assert fraction_renewal(cert, 0.25) == cert.not_valid_before_utc + dt.timedelta(days=67.5)


def test_ari_window_parsing_and_choice() -> None:
    window = parse_ari({"suggestedWindow": {"start": "2026-01-01T00:00:00Z",
                                            "end": "2026-01-02T00:00:00Z"}})
    assert window == AriWindow(dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                               dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
    moment = ari_renewal(window, random.Random(1))  # noqa: S311  jitter, seeded for the test
    assert window.start <= moment <= window.end
    bad: object
    for bad in ({}, {"suggestedWindow": {"start": "2026-01-02T00:00:00Z",
                                         "end": "2026-01-01T00:00:00Z"}}, []):
        with pytest.raises((ValueError, KeyError, TypeError)):
            parse_ari(bad)


def test_backoff_grows_caps_and_honours_retry_after() -> None:
    rng = random.Random(7)  # noqa: S311  jitter, seeded for the test
    assert 4.0 <= backoff(1, None, rng) <= 6.0
    assert 32.0 <= backoff(4, None, rng) <= 48.0
    assert backoff(40, None, rng) <= 3600.0
    assert backoff(1, 120.0, rng) == 120.0  # a rate limit's Retry-After wins
    assert backoff(1, 7 * 86400.0, rng) == 7 * 86400.0
    assert retry_after_seconds("30") == 30.0
    assert retry_after_seconds("Thu, 01 Jan 2026 00:01:00 GMT", now=dt.datetime(
        2026, 1, 1, tzinfo=dt.UTC).timestamp()) == 60.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_a_rate_limit_problem_carries_its_retry_after() -> None:
    body = json.dumps({"type": "urn:ietf:params:acme:error:rateLimited",
                       "detail": "too many certificates already issued"}).encode()
    with pytest.raises(AcmeError) as caught:
        checked(Response(429, {"retry-after": "3600"}, body))
    error = caught.value
    assert (error.short_type, error.status, error.retry_after) == ("rateLimited", 429, 3600.0)
    assert "too many certificates" in str(error)
    with pytest.raises(AcmeError) as caught:
        checked(Response(503, {}, b"<html>down</html>"))
    assert caught.value.problem == "serverInternal" and caught.value.retry_after is None
    ok = Response(200, {}, b"{}")
    assert checked(ok) is ok


def test_an_unreachable_ca_is_an_acme_error_not_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = AcmeClient(f"https://127.0.0.1:{port}/dir")
    with pytest.raises(AcmeError) as caught:
        client.directory()
    assert caught.value.problem == "connection" and caught.value.status == 0
    with pytest.raises(AcmeError):
        AcmeClient("http://127.0.0.1/dir").directory()  # ACME is https only


def test_an_endless_answer_is_cut_at_its_cap_not_read_into_memory(tmp_path: Path) -> None:
    """A CA (or what answers in its place) streaming for ever took 2.3 GB in 5 s."""
    pki = make_dev_pki(tmp_path / "pki")
    context = server_context(pki.server_cert, pki.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    sent = [0]

    def serve() -> None:
        sock, _ = listener.accept()
        try:
            with context.wrap_socket(sock, server_side=True) as tls:
                tls.recv(65536)
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
                while sent[0] < 64 << 20:
                    tls.sendall(b" " * 65536)
                    sent[0] += 65536
        except OSError:
            pass  # the client hung up: what it should do

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = AcmeClient(f"https://127.0.0.1:{listener.getsockname()[1]}/dir",
                        ca_bundle=str(pki.ca_cert))
    with pytest.raises(AcmeError) as caught:
        client.directory()
    assert caught.value.problem == "malformedResponse" and "larger than 1 MiB" in str(caught.value)
    thread.join(10)
    listener.close()
    assert sent[0] < 16 << 20, sent[0]


# ------------------------------------------------------------------ cache


def test_one_account_key_generated_once_0600_and_a_corrupt_one_refused(tmp_path: Path) -> None:
    cache = AcmeCache(tmp_path / "acme")
    assert (tmp_path / "acme").stat().st_mode & 0o777 == 0o700
    first = cache.account_key()
    assert (tmp_path / "acme" / "account-key.pem").stat().st_mode & 0o777 == 0o600
    assert AcmeCache(tmp_path / "acme").account_key().jwk() == first.jwk()
    key, other = AccountKey.generate(), AccountKey.generate()
    cache.save_account_url("https://a/dir", "https://a/acct/1", key)
    cache.save_account_url("https://b/dir", "https://b/acct/9", key)
    assert cache.account_url("https://a/dir", key) == "https://a/acct/1"
    assert cache.account_url("https://b/dir", key) == "https://b/acct/9"
    assert cache.account_url("https://a/dir", other) is None  # a new key: a new account
    (tmp_path / "acme" / "account-key.pem").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="registers a new account"):
        cache.account_key()


# ------------------------------------------------------------------ http-01


def test_http01_listener_serves_only_published_challenges() -> None:
    responder = Http01Responder("127.0.0.1:0")
    responder.start()
    try:
        responder.add("hsm.test", "tok_en-1", "tok_en-1.thumb")

        def get(path: str) -> tuple[int, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", responder.port, timeout=5)
            conn.request("GET", path, headers={"Host": "hsm.test"})
            resp = conn.getresponse()
            out = resp.status, resp.read()
            conn.close()
            return out

        assert get("/.well-known/acme-challenge/tok_en-1") == (200, b"tok_en-1.thumb")
        for other in ("/", "/.well-known/acme-challenge/", "/.well-known/acme-challenge/nope",
                      "/.well-known/acme-challenge/../../etc/passwd", "/v1/keys"):
            assert get(other)[0] == 404
        responder.remove("hsm.test", "tok_en-1")
        assert get("/.well-known/acme-challenge/tok_en-1")[0] == 404
    finally:
        responder.stop()


def test_http01_listener_bounds_slow_senders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slow senders from one address get at most MAX_PER_ADDRESS threads (the rest are closed
    at once), none lives past LIFETIME, and the address is served again once they are gone."""
    import socket
    import time

    from ferrohsm.tls.acme.challenges import _BoundedServer
    monkeypatch.setattr(_BoundedServer, "LIFETIME", 3.0)
    responder = Http01Responder("127.0.0.1:0")
    responder.start()
    held: list[socket.socket] = []
    try:
        for _ in range(_BoundedServer.MAX_PER_ADDRESS + 2):
            sock = socket.create_connection(("127.0.0.1", responder.port), timeout=5)
            sock.sendall(b"GET / HTTP/1.1\r\n")  # and nothing more: a slow sender
            held.append(sock)
        time.sleep(0.3)
        closed = []
        for sock in held:
            sock.settimeout(0.1)
            try:
                closed.append(sock.recv(1) == b"")
            except TimeoutError:
                closed.append(False)
        assert closed.count(True) == 2, closed  # the two over the bound, closed at once
        for sock in held:  # past LIFETIME every held one is closed too
            sock.settimeout(6)
            assert sock.recv(1) == b""
        conn = http.client.HTTPConnection("127.0.0.1", responder.port, timeout=5)
        conn.request("GET", "/")
        assert conn.getresponse().status == 404
        conn.close()
    finally:
        for sock in held:
            sock.close()
        responder.stop()


# ------------------------------------------------------------------ tls-alpn-01


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return make_dev_pki(tmp_path_factory.mktemp("pki"), hosts=["hsm.test"])


@pytest.fixture
def tls_port(pki: DevPki, tmp_path: Path) -> Iterator[tuple[int, TlsAlpnResponder]]:
    """A real TLS server whose context is hooked by a responder with one pending answer."""
    responder = TlsAlpnResponder(AcmeCache(tmp_path / "acme"))
    responder.add("hsm.test", "tok", "tok.thumb")
    context = server_context(pki.server_cert, pki.server_key)
    responder.install(context)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # so the thread sees ``stop`` soon after the test
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(5)
            try:
                with context.wrap_socket(sock, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], responder
    stop.set()
    thread.join(5)
    listener.close()


def handshake(port: int, alpn: list[str] | None) -> tuple[x509.Certificate, str | None]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the test inspects it
    if alpn:
        context.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="hsm.test") as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der), tls.selected_alpn_protocol()


def test_tls_alpn01_answers_only_clients_asking_acme_tls_1(
        tls_port: tuple[int, TlsAlpnResponder], pki: DevPki) -> None:
    port, responder = tls_port
    cert, alpn = handshake(port, ["acme-tls/1"])
    assert alpn == "acme-tls/1"
    ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert ext.critical
    assert ext.value.public_bytes() == b"\x04\x20" + hashlib.sha256(b"tok.thumb").digest()
    # an ordinary client naming the same domain during the validation keeps the real certificate
    real = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    for offer in (None, ["http/1.1"]):
        assert handshake(port, offer)[0].serial_number == real.serial_number
    responder.remove("hsm.test", "tok")
    assert not responder.pending()
    assert handshake(port, ["acme-tls/1"])[0].serial_number == real.serial_number


def test_offered_alpn_reads_a_client_hello() -> None:
    assert offered_alpn(b"") == [] and offered_alpn(b"\x02" + b"\x00" * 60) == []
    assert offered_alpn(b"\x01\x00\x00") == []  # truncated: nothing, no exception


# ------------------------------------------------------------------ settings


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


def test_tls_acme_table_parses_with_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, '[tls]\nmode = "acme"\n[tls.acme]\ndomains = ["hsm.example.com"]\n'
                 'challenge = "tls-alpn-01"\n')
    config = load_config(path, env={"FERROHSM_TLS_ACME_RENEW_BEFORE_FRACTION": "0.5"})
    acme = config.tls.acme
    assert config.tls.mode == "acme" and acme.domains == ("hsm.example.com",)
    assert acme.challenge == "tls-alpn-01" and acme.renew_before_fraction == 0.5
    assert acme.directory == "letsencrypt-staging" and acme.cache_dir == ""
    assert load_config(None, env={}).tls.mode == "pem"


@pytest.mark.parametrize(("body", "needle"), [
    ('[tls]\nmode = "acme"\n', "[tls.acme].domains must name"),
    ('[tls]\nmode = "acme"\n[tls.acme]\ndomains = ["*.example.com"]\n', "DNS names"),
    ('[tls]\nmode = "acme"\n[tls.acme]\ndomains = ["192.0.2.1"]\n', "DNS names"),
    ('[tls]\nmode = "acme"\n[tls.acme]\ndomains = ["a.example"]\nchallenge = "dns-01"\n',
     "[tls.acme].challenge"),
    ('[tls]\nmode = "acme"\n[tls.acme]\ndomains = ["a.example"]\nrenew_before_fraction = 1\n',
     "renew_before_fraction"),
    ('[tls]\nmode = "acme"\n[tls.acme]\ndomains = ["a.example"]\nrenew_before_fraction = 0\n',
     "renew_before_fraction"),
    ('[tls]\nmode = "acme"\n[tls.acme]\ndomains = ["a.example"]\ndirectory = "http://x/d"\n',
     "[tls.acme].directory"),
    ('[tls]\nmode = "acme"\n[tls.acme]\ndomains = ["a.example"]\nhttp_listen = "80"\n',
     "[tls.acme].http_listen"),
    ('[tls]\nmode = "manual"\n', "[tls].mode"),
    ('[tls.acme]\nnope = 1\n', "unknown setting [tls.acme].nope"),
    ('[tls]\nacme = "x"\n', "[tls.acme] must be a table"),
])
def test_bad_acme_settings_name_the_setting(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, body), env={})
    assert needle in caught.value.message


def test_presets_name_the_real_lets_encrypt_directories() -> None:
    assert directory_url("letsencrypt") == "https://acme-v02.api.letsencrypt.org/directory"
    assert directory_url("letsencrypt-staging") == \
        "https://acme-staging-v02.api.letsencrypt.org/directory"
    assert directory_url("https://ca.internal/acme/dir") == "https://ca.internal/acme/dir"


def _leaf(names: list[str], days: float) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_cached_certificates_are_served_only_when_usable(tmp_path: Path) -> None:
    cache = AcmeCache(tmp_path / "acme")
    now = dt.datetime.now(dt.UTC)
    prod, staging = "https://prod/dir", "https://staging/dir"
    chain, key = _leaf(["hsm.test", "api.hsm.test"], 30)
    cache.save_cert(prod, ["hsm.test", "api.hsm.test"], chain, key)
    assert cache.load_cert(prod, ["api.hsm.test", "hsm.test"], now) is not None  # any order
    assert cache.load_cert(staging, ["hsm.test", "api.hsm.test"], now) is None  # per directory
    assert cache.load_cert(prod, ["hsm.test"], now) is None  # per set of domains
    assert cache.load_cert(prod, ["hsm.test", "api.hsm.test"],
                           now + dt.timedelta(days=31)) is None  # expired
    keys = list((tmp_path / "acme").glob("cert-*-key.pem"))
    assert len(keys) == 1 and keys[0].stat().st_mode & 0o777 == 0o600
    _, other_key = _leaf(["hsm.test"], 30)
    keys[0].write_bytes(other_key)  # a pair that does not match is never served
    assert cache.load_cert(prod, ["hsm.test", "api.hsm.test"], now) is None
