"""Authentication against a real server over real TLS: keysets, reload, deny-list, mTLS binding,
rate limits and request context. Every log line the servers write is captured, and the last test
checks that no token, secret or key material reached the logs or the audit log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import io
import json
import logging
import os
import secrets
import ssl
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from live import LiveServer

from ferrohsm.auth.authn import issue_token
from ferrohsm.telemetry.access import ACCESS, use_stream
from ferrohsm.telemetry.logs import JSONFormatter
from ferrohsm.tls.context import client_context
from ferrohsm.tls.devpki import make_dev_pki

CI_ENV = "FERROHSM_TEST_ISSUE4_CI_SECRET"
CI_SECRET = "ci-secret-" + secrets.token_hex(20)
Reply = tuple[int, dict[str, str], Any]


class Vault:
    """Everything that must never appear in a log line or an audit record."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, value: str | bytes) -> None:
        if isinstance(value, bytes):
            self.items += [base64.b64encode(value).decode(), value.hex(),
                           base64.urlsafe_b64encode(value).rstrip(b"=").decode()]
            text = value.decode("utf-8", "ignore")
            value = text if text.isprintable() and len(text) >= 16 else ""
        if value:
            self.items.append(value)
            if value.count(".") == 2:  # a JWT: its signature alone must not leak either
                self.items.append(value.rsplit(".", 1)[1])


VAULT = Vault()
LINES: list[str] = []


class Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        LINES.append(self.format(record))


@pytest.fixture(scope="module", autouse=True)
def capture_logs() -> Iterator[None]:
    handler = Collect(logging.DEBUG)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("ferrohsm")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    use_stream(AccessLines())  # the access log writes its own lines, outside logging
    yield
    ACCESS.flush()
    use_stream(None)
    logger.removeHandler(handler)
    logger.setLevel(old_level)


class AccessLines(io.StringIO):
    """The access log's stream: each line joins LINES."""

    def write(self, text: str) -> int:
        LINES.extend(text.splitlines())
        return len(text)


def mint(secret: Any = None, **kw: Any) -> str:
    kw.setdefault("subject", "tester")
    kw.setdefault("role", "operator")
    token = issue_token(secret, **kw)
    VAULT.add(token)
    return token


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(secret: bytes, header: dict[str, Any] | str, claims: dict[str, Any] | str) -> str:
    head = header if isinstance(header, str) else json.dumps(header)
    body = claims if isinstance(claims, str) else json.dumps(claims)
    signing_input = f"{b64(head.encode())}.{b64(body.encode())}"
    token = f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), 'sha256').digest())}"
    VAULT.add(token)
    return token


def fresh_ip() -> str:
    return f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


def send(srv: LiveServer, method: str, path: str, *, token: str | None = None,
         body: Any = None, headers: Sequence[tuple[str, str]] = (),
         ctx: ssl.SSLContext | None = None, xff: str | None = "auto",
         conn: http.client.HTTPSConnection | None = None) -> Reply:
    """One request with exact header control (repeated fields allowed)."""
    own = conn is None
    conn = conn or http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx or srv.ctx,
                                               timeout=10)
    try:
        conn.putrequest(method, path)
        data = json.dumps(body).encode() if body is not None else b""
        fields = list(headers)
        if token is not None:
            fields.append(("Authorization", f"Bearer {token}"))
        if xff is not None:
            fields.append(("X-Forwarded-For", fresh_ip() if xff == "auto" else xff))
        if data or method in ("POST", "PATCH"):
            fields += [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        for name, value in fields:
            conn.putheader(name, value)
        conn.endheaders(data or None)
        resp = conn.getresponse()
        payload = resp.read()
        parsed = json.loads(payload) if payload and "json" in (resp.getheader(
            "Content-Type") or "") else payload
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed
    finally:
        if own:
            conn.close()


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    return {**json.loads(jwt.get_algorithm_by_name(alg).to_jwk(key.public_key())),
            "kid": kid, "alg": alg}


def write_jwks(path: Path, keys: list[dict[str, Any]] | str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(keys if isinstance(keys, str) else json.dumps({"keys": keys}))
    os.replace(tmp, path)


def thumbprint(cert_path: Path) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert_path.read_text())
    return b64(hashlib.sha256(der).digest())


def audit_records(srv: LiveServer) -> list[dict[str, Any]]:
    return srv.rt.audit.read(0, 100000)


# ---- servers ----------------------------------------------------------------------------------

def wired(srv: LiveServer) -> LiveServer:
    """Fail loudly (once per fixture) when app.py does not yet build auth from the config."""
    routes = {(r.method, r.template) for r in srv.rt.router.routes()}
    if ("POST", "/v1/tokens/revoke") not in routes:
        srv.close()
        pytest.fail("ferrohsm/app.py does not wire issue 4 yet (build_authenticator, "
                    "RateLimiter(policy_from_settings(...)), handlers.tokens.register)")
    return srv


class Keys:
    es1 = ec.generate_private_key(ec.SECP256R1())
    es2 = ec.generate_private_key(ec.SECP384R1())
    rs1 = rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def main(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Every keyset source, reload on each request, 127.0.0.1 a trusted proxy, tight limits."""
    tmp = tmp_path_factory.mktemp("auth-main")
    jwks, rs_pem = tmp / "jwks.json", tmp / "rs1.pem"
    write_jwks(jwks, [jwk(Keys.es1, "es-1", "ES256")])
    rs_pem.write_bytes(public_pem(Keys.rs1))
    for key in (Keys.es1, Keys.es2, Keys.rs1):
        VAULT.add(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()[30:90])
    VAULT.add(CI_SECRET)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CI_ENV, CI_SECRET)
        srv = LiveServer(tmp, overrides={
            ("auth", "jwks_file"): str(jwks),
            ("auth", "public_key_files"): [f"rs-1:RS256:{rs_pem}"],
            ("auth", "hs256_secret_envs"): [f"ci:{CI_ENV}"], ("auth", "keyset_reload_seconds"): 0.0,
            ("rate_limit", "trusted_proxies"): ["127.0.0.1/32"],
            ("rate_limit", "ip_requests_per_second"): 1.0, ("rate_limit", "ip_burst"): 5,
            ("rate_limit", "auditor_requests_per_second"): 2.0, ("rate_limit", "auditor_burst"): 3,
            ("rate_limit", "max_tracked"): 100})
    wired(srv).jwks = jwks  # type: ignore[attr-defined]  # read back by the tests below
    for value in (srv.secrets.master_key, srv.secrets.jwt_hs256_secret,
                  srv.secrets.audit_hmac_key):
        VAULT.add(value)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Optional client certificates; service tokens must be bound; no trusted proxy."""
    tmp = tmp_path_factory.mktemp("auth-mtls")
    pki = make_dev_pki(tmp / "pki")
    srv = LiveServer(tmp, overrides={("tls", "client_ca"): str(pki.ca_cert),
                                     ("auth", "require_bound_tokens_for_roles"): ["service"]})
    wired(srv)
    VAULT.add(srv.secrets.jwt_hs256_secret)
    yield srv
    srv.close()


def client(srv: LiveServer, name: str) -> tuple[ssl.SSLContext, str]:
    cert, key = srv.pki.issue_client_cert(name)
    VAULT.add(key.read_text()[30:90])
    return client_context(str(srv.pki.ca_cert), str(cert), str(key)), thumbprint(cert)


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": "ferrohsm", "aud": "ferrohsm", "sub": "mallory", "role": "auditor",
            "iat": now, "exp": now + 300, "jti": secrets.token_hex(8), **over}


# ---- keysets ----------------------------------------------------------------------------------

def test_every_keyset_source_verifies_its_tokens(main: LiveServer) -> None:
    tokens = [mint(main.secrets.jwt_hs256_secret),
              mint(CI_SECRET.encode(), kid="ci"),
              mint(Keys.es1, algorithm="ES256", kid="es-1"),
              mint(Keys.rs1, algorithm="RS256", kid="rs-1")]
    for token in tokens:
        assert send(main, "GET", "/v1/keys", token=token)[0] == 200


REJECTIONS = {
    "alg_none": lambda s: f"{b64(json.dumps({'alg': 'none'}).encode())}."
                          f"{b64(json.dumps(claims()).encode())}.",
    "hs_rs_confusion": lambda s: forge(public_pem(Keys.rs1), {"alg": "HS256", "kid": "rs-1"},
                                       claims()),
    "alg_switch": lambda s: forge(s, {"alg": "ES256", "kid": "ci"}, claims()),
    "unknown_kid": lambda s: forge(s, {"alg": "HS256", "kid": "../../etc/passwd"}, claims()),
    "crit": lambda s: forge(s, {"alg": "HS256", "crit": ["exp"]}, claims()),
    "jku": lambda s: forge(s, {"alg": "HS256", "jku": "https://evil/jwks"}, claims()),
    "x5u": lambda s: forge(s, {"alg": "HS256", "x5u": "https://evil/c.pem"}, claims()),
    "jwk": lambda s: forge(s, {"alg": "HS256", "jwk": {"kty": "oct", "k": "AA"}}, claims()),
    "duplicate_member": lambda s: forge(s, {"alg": "HS256"},
                                        json.dumps(claims())[:-1] + ', "role": "administrator"}'),
    "oversized": lambda s: forge(s, {"alg": "HS256"}, claims(pad="x" * 9000)),
    "bad_signature": lambda s: forge(b"x" * 32, {"alg": "HS256"}, claims()),
    "expired": lambda s: forge(s, {"alg": "HS256"}, claims(iat=1000, exp=1300)),
    "not_yet_valid": lambda s: forge(s, {"alg": "HS256"}, claims(nbf=int(time.time()) + 600)),
    "lifetime": lambda s: forge(s, {"alg": "HS256"}, claims(exp=int(time.time()) + 5000)),
    "issuer": lambda s: forge(s, {"alg": "HS256"}, claims(iss="evil")),
    "audience": lambda s: forge(s, {"alg": "HS256"}, claims(aud="other")),
    "exp_string": lambda s: forge(s, {"alg": "HS256"}, claims(exp=str(int(time.time()) + 60))),
    "role_list": lambda s: forge(s, {"alg": "HS256"}, claims(role=["administrator"])),
    "role_case": lambda s: forge(s, {"alg": "HS256"}, claims(role="Administrator")),
    "missing_sub": lambda s: forge(s, {"alg": "HS256"}, {k: v for k, v in claims().items()
                                                         if k != "sub"}),
    "padded_signature": lambda s: forge(s, {"alg": "HS256"}, claims()) + "=",
}


@pytest.mark.parametrize("name", sorted(REJECTIONS))
def test_rejection_class(main: LiveServer, name: str) -> None:
    token = REJECTIONS[name](main.secrets.jwt_hs256_secret)
    status, headers, body = send(main, "GET", "/v1/keys", token=token)
    assert status == 401 and body["error"]["code"] == "unauthenticated", (status, body)
    assert headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_two_authorization_headers_are_400(main: LiveServer) -> None:
    token = mint(main.secrets.jwt_hs256_secret)
    status, _, body = send(main, "GET", "/v1/keys", token=token,
                           headers=[("Authorization", f"Bearer {token}")])
    assert status == 400 and body["error"]["code"] == "bad_request"


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer  ", "bearer"])
def test_non_bearer_or_empty_is_401_with_the_challenge(main: LiveServer, value: str) -> None:
    status, headers, _ = send(main, "GET", "/v1/keys", headers=[("Authorization", value)])
    assert status == 401 and headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_token_in_the_query_string_is_never_accepted(main: LiveServer) -> None:
    token = mint(main.secrets.jwt_hs256_secret, role="administrator")
    assert send(main, "GET", f"/v1/keys?access_token={token}")[0] in (400, 401)
    assert send(main, "GET", f"/v1/keys?access_token={token}", token=token)[0] == 400


def test_keyset_reload_add_remove_and_malformed(main: LiveServer) -> None:
    jwks: Path = main.jwks  # type: ignore[attr-defined]  # set by the main fixture
    es1 = mint(Keys.es1, algorithm="ES256", kid="es-1")
    es2 = mint(Keys.es2, algorithm="ES384", kid="es-2")
    assert send(main, "GET", "/v1/keys", token=es1)[0] == 200
    assert send(main, "GET", "/v1/keys", token=es2)[0] == 401
    write_jwks(jwks, [jwk(Keys.es1, "es-1", "ES256"), jwk(Keys.es2, "es-2", "ES384")])  # add
    assert send(main, "GET", "/v1/keys", token=es2)[0] == 200
    write_jwks(jwks, [jwk(Keys.es2, "es-2", "ES384")])  # remove es-1 (its token is cached)
    assert send(main, "GET", "/v1/keys", token=es1)[0] == 401
    write_jwks(jwks, '{"keys": [{"kid": "es-3", "kty": "EC"')  # malformed: old keyset stays
    assert send(main, "GET", "/v1/keys", token=es2)[0] == 200
    assert send(main, "GET", "/v1/keys", token=es1)[0] == 401
    write_jwks(jwks, [jwk(Keys.es1, "es-1", "ES256")])
    assert main.rt.authenticator.reload("SIGHUP")
    assert send(main, "GET", "/v1/keys", token=es1)[0] == 200
    reloads = [(r["outcome"], r["message"]) for r in audit_records(main)
               if r["action"] == "auth.keyset_reload"]
    assert [o for o, _ in reloads] == ["success", "success", "error", "success"]
    assert "added ['es-2']" in reloads[0][1] and "removed ['es-1']" in reloads[1][1]
    assert "SIGHUP" in reloads[3][1]


def test_deny_listed_token(main: LiveServer) -> None:
    secret = main.secrets.jwt_hs256_secret
    victim = mint(secret, subject="leaky", role="operator", jti="leaked-jti-1")
    admin = mint(secret, subject="root", role="administrator")
    assert send(main, "GET", "/v1/keys", token=victim)[0] == 200
    assert send(main, "POST", "/v1/tokens/revoke", token=victim, body={"jti": "x"})[0] == 403
    status, _, body = send(main, "POST", "/v1/tokens/revoke", token=admin,
                           body={"jti": "leaked-jti-1"})
    assert status == 200 and body["revoked"] is True
    for variant in (victim, victim + "=", victim + "=="):
        status, _, body = send(main, "GET", "/v1/keys", token=variant)
        assert status == 401, variant[-3:]
    assert send(main, "GET", "/v1/keys", token=mint(secret, subject="leaky", role="operator"))[0] \
        == 200
    path = main.data_dir / "revoked-tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and "leaked-jti-1" in path.read_text()
    actions = [(r["action"], r["outcome"]) for r in audit_records(main)
               if r["action"] == "token.revoke"]
    assert actions == [("token.revoke", "denied"), ("token.revoke", "success")]



@pytest.mark.parametrize("exp", [-1, 253_402_214_400, 99999999999999999999, 10**18])
def test_revoking_with_an_expiry_no_date_can_hold_is_a_400_that_stores_nothing(
        main: LiveServer, exp: int) -> None:
    admin = mint(main.secrets.jwt_hs256_secret, subject="root", role="administrator")
    jti = f"far-{abs(exp) % 1000}-{len(str(exp))}"
    status, _, body = send(main, "POST", "/v1/tokens/revoke", token=admin,
                           body={"jti": jti, "exp": exp})
    assert status == 400 and body["error"]["code"] == "bad_request", body
    assert "exp must be" in body["error"]["message"]
    path = main.data_dir / "revoked-tokens.json"
    assert not path.exists() or jti not in path.read_text()
    assert not [r for r in audit_records(main)
                if r["action"] == "token.revoke" and r["outcome"] == "success"
                and (r.get("details") or {}).get("jti") == jti]
    latest = send(main, "POST", "/v1/tokens/revoke", token=admin,
                  body={"jti": jti, "exp": 253_402_214_399})  # the last accepted second
    assert latest[0] == 200 and latest[2]["until"].startswith("9999-12-31"), latest
    assert [r for r in audit_records(main) if r["action"] == "token.revoke"
            and r["outcome"] == "success" and (r.get("details") or {}).get("jti") == jti]

# ---- rate limits ------------------------------------------------------------------------------

def test_rate_limit_429_then_recovery(main: LiveServer) -> None:
    secret = main.secrets.jwt_hs256_secret
    token = mint(secret, subject="rl-auditor", role="auditor")
    conn = http.client.HTTPSConnection("127.0.0.1", main.port, context=main.ctx, timeout=10)
    try:
        statuses: list[int] = []
        while len(statuses) < 20 and 429 not in statuses:  # burst 3, then 2/s: 429 comes soon
            status, headers, body = send(main, "GET", "/v1/keys", token=token, conn=conn)
            statuses.append(status)
        assert statuses[:3] == [200, 200, 200] and statuses[-1] == 429, statuses
        assert body["error"]["code"] == "rate_limited"
        assert int(headers["retry-after"]) >= 1
        again = mint(secret, subject="rl-auditor", role="auditor")  # new token, same subject
        assert send(main, "GET", "/v1/keys", token=again, conn=conn)[0] == 429
        other = mint(secret, subject="rl-someone-else", role="auditor")
        assert send(main, "GET", "/v1/keys", token=other, conn=conn)[0] == 200
        time.sleep(0.6)  # 2 tokens per second: one is back
        assert send(main, "GET", "/v1/keys", token=token, conn=conn)[0] == 200
    finally:
        conn.close()


def test_failed_attempts_are_limited_per_source_ip(main: LiveServer) -> None:
    ip, bogus = fresh_ip(), forge(b"x" * 32, {"alg": "HS256"}, claims())
    assert [send(main, "GET", "/v1/keys", token=bogus, xff=ip)[0] for _ in range(5)] == [401] * 5
    status, headers, _ = send(main, "GET", "/v1/keys", token=bogus, xff=ip)
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert send(main, "GET", "/no-such-page", xff=ip)[0] == 429  # unauthenticated routes too
    # but not the probes: they report the server's health, not this address's bucket
    # (/readyz says 503 here: this in-process server never announces that it started)
    assert [send(main, "GET", probe, xff=ip)[0] for probe in ("/healthz", "/readyz")] == [200, 503]
    valid = mint(main.secrets.jwt_hs256_secret, subject="behind-the-same-nat")
    assert send(main, "GET", "/v1/keys", token=valid, xff=ip)[0] == 200
    assert send(main, "GET", "/v1/keys", token=bogus, xff=fresh_ip())[0] == 401


def test_a_valid_tokens_404s_spend_its_own_bucket_not_its_addresss(main: LiveServer) -> None:
    """The per-address bucket is for callers with no valid token; a client with one that
    probes unknown paths pays from its own bucket (auditor: burst 3) and is named in the
    record, and the address stays open for everyone else behind it."""
    ip = fresh_ip()
    token = mint(main.secrets.jwt_hs256_secret, subject="lost-auditor", role="auditor")
    statuses = [send(main, "GET", "/v1/nope", token=token, xff=ip)[0] for _ in range(8)]
    assert statuses[:3] == [404] * 3 and statuses[-1] == 429, statuses
    assert send(main, "GET", "/no-such-page", xff=ip)[0] == 404  # the address's bucket is full
    records = main.rt.audit.read(0, 100000)
    assert any(r["actor"] == "lost-auditor" and r["action"] == "request.refused"
               and "404" in r["message"] for r in records)


def test_healthz_is_no_free_oracle_for_guessed_tokens(main: LiveServer) -> None:
    """Each bad token on /healthz spends a token of the address's bucket (burst 5); once it is
    empty the address is told the status only, even with a valid token: guessing there costs
    what it costs anywhere. Another address still sees the details."""
    ip, bogus = fresh_ip(), forge(b"x" * 32, {"alg": "HS256"}, claims())
    admin = mint(main.secrets.jwt_hs256_secret, subject="health-admin", role="administrator")
    assert "audit" in send(main, "GET", "/healthz", token=admin, xff=ip)[2]
    for _ in range(5):
        assert send(main, "GET", "/healthz", token=bogus, xff=ip)[0] == 200  # never a 401
    status, _, body = send(main, "GET", "/healthz", token=admin, xff=ip)
    assert status == 200 and "audit" not in body and body["status"] == "ok"
    assert "audit" in send(main, "GET", "/healthz", token=admin, xff=fresh_ip())[2]


def test_memory_stays_bounded_under_a_flood_of_bogus_subjects(main: LiveServer) -> None:
    limiter = main.rt.app.limiter
    before = limiter.stats()["actor_buckets"]
    conn = http.client.HTTPSConnection("127.0.0.1", main.port, context=main.ctx, timeout=10)
    try:
        for i in range(150):  # forged subjects never get a bucket: only verified actors do
            send(main, "GET", "/v1/keys", token=forge(b"y" * 32, {"alg": "HS256"},
                                                       claims(sub=f"bogus-{i}")), conn=conn)
        for i in range(150):  # valid distinct subjects: bounded by max_tracked
            send(main, "GET", "/healthz", conn=conn)
            send(main, "GET", "/v1/keys", conn=conn,
                 token=mint(main.secrets.jwt_hs256_secret, subject=f"flood-{i}"))
    finally:
        conn.close()
    stats = limiter.stats()
    assert stats["actor_buckets"] <= 100 and stats["ip_buckets"] <= 100
    assert before <= 100


def test_forwarded_for_is_ignored_unless_the_peer_is_trusted(main: LiveServer,
                                                            mtls: LiveServer) -> None:
    token = mint(main.secrets.jwt_hs256_secret, subject="xff-main")
    send(main, "GET", "/v1/keys", token=token, xff="203.0.113.77")
    token = mint(mtls.secrets.jwt_hs256_secret, subject="xff-mtls")
    send(mtls, "GET", "/v1/keys", token=token, xff="203.0.113.78")
    seen = {r["actor"]: r["source_ip"] for s in (main, mtls) for r in audit_records(s)
            if r["actor"] in ("xff-main", "xff-mtls")}
    assert seen == {"xff-main": "203.0.113.77", "xff-mtls": "127.0.0.1"}


# ---- mutual TLS -------------------------------------------------------------------------------

def test_bound_token_only_on_its_certificate(mtls: LiveServer) -> None:
    ctx_a, thumb_a = client(mtls, "svc-a")
    ctx_b, _ = client(mtls, "svc-b")
    token = mint(mtls.secrets.jwt_hs256_secret, subject="svc", role="service",
                 cnf_thumbprint=thumb_a)
    assert send(mtls, "GET", "/v1/keys", token=token, ctx=ctx_a)[0] == 200
    assert send(mtls, "GET", "/v1/keys", token=token, ctx=ctx_b)[0] == 401
    assert send(mtls, "GET", "/v1/keys", token=token)[0] == 401


def test_roles_configured_to_need_bound_tokens(mtls: LiveServer) -> None:
    ctx_a, _ = client(mtls, "svc-c")
    unbound = mint(mtls.secrets.jwt_hs256_secret, subject="svc", role="service")
    assert send(mtls, "GET", "/v1/keys", token=unbound, ctx=ctx_a)[0] == 401
    operator = mint(mtls.secrets.jwt_hs256_secret, subject="op", role="operator")
    assert send(mtls, "GET", "/v1/keys", token=operator)[0] == 200


def test_required_client_certificates(tmp_path: Path) -> None:
    pki = make_dev_pki(tmp_path / "pki")
    srv = LiveServer(tmp_path, overrides={("tls", "client_ca"): str(pki.ca_cert),
                                          ("tls", "require_client_cert"): True})
    try:
        token = mint(srv.secrets.jwt_hs256_secret, role="operator")
        VAULT.add(srv.secrets.jwt_hs256_secret)
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            send(srv, "GET", "/v1/keys", token=token)
        ctx, _ = client(srv, "ops")
        assert send(srv, "GET", "/v1/keys", token=token, ctx=ctx)[0] == 200
    finally:
        srv.close()


def test_context_reaches_the_audit_record_and_the_logs(mtls: LiveServer) -> None:
    ctx, thumb = client(mtls, "ctx-client")
    token = mint(mtls.secrets.jwt_hs256_secret, subject="ctx-svc", role="service",
                 cnf_thumbprint=thumb, sid="session-42")
    trace = "0af7651916cd43dd8448eb211c80319c"
    status, headers, _ = send(mtls, "GET", "/v1/keys", token=token, ctx=ctx, headers=[
        ("X-Request-ID", "req-ctx-1"), ("X-Correlation-ID", "corr-ctx-1"),
        ("traceparent", f"00-{trace}-b7ad6b7169203331-01")])
    assert status == 200 and headers["x-request-id"] == "req-ctx-1"
    record = next(r for r in audit_records(mtls) if r["request_id"] == "req-ctx-1")
    assert (record["actor"], record["role"], record["session"], record["client_fingerprint"],
            record["source_ip"], record["correlation_id"], record["trace_id"]) == (
        "ctx-svc", "service", "session-42", thumb, "127.0.0.1", "corr-ctx-1", trace)
    ACCESS.flush()
    line = next(json.loads(x) for x in LINES if "req-ctx-1" in x)
    assert line["user.id"] == "ctx-svc" and line["correlation_id"] == "corr-ctx-1"
    assert line["trace_id"] == trace
    refused = send(mtls, "GET", "/v1/keys", token=token, headers=[("X-Request-ID", "req-ctx-2")])
    assert refused[0] == 401
    denied = next(r for r in audit_records(mtls) if r["request_id"] == "req-ctx-2")
    assert denied["action"] == "auth.authenticate" and denied["outcome"] == "denied"


# ---- last: nothing secret was logged -----------------------------------------------------------

def test_zz_no_token_secret_or_key_material_in_logs_or_audit(main: LiveServer,
                                                             mtls: LiveServer) -> None:
    ACCESS.flush()
    assert len(LINES) > 300 and len(VAULT.items) > 300
    haystacks = {"logs": "\n".join(LINES)}
    for name, srv in (("main audit", main), ("mtls audit", mtls)):
        haystacks[name] = "\n".join(json.dumps(r) for r in audit_records(srv))
    for where, text in haystacks.items():
        leaked = [item[:12] + "…" for item in VAULT.items if len(item) >= 16 and item in text]
        assert not leaked, f"{where} contains secrets: {leaked}"
