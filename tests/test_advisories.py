"""One named test per attack on authentication and authorization that FerroHSM defends against.

In the spirit of pyjwt's ``test_advisory.py``: each test forges the hostile input by hand (raw
base64url and JSON, so no library normalizes the attack away) and shows it is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ferrohsm.api.http import Headers, Request, Response
from ferrohsm.auth.authn import Authenticator, TokenRejected, issue_token
from ferrohsm.auth.keysets import KeysetSources, ReloadingKeySet
from ferrohsm.config import Secrets, load_config
from ferrohsm.domain.errors import BadRequest

SECRET = b"advisory-secret-advisory-secret!"
NOW = int(time.time())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())  # at call time: a long suite must not expire tokens made at import
    return {"iss": "ferrohsm", "aud": "ferrohsm", "sub": "mallory", "role": "service",
            "iat": now, "exp": now + 300, "jti": "adv-1", **over}


def raw_token(header: str, payload: str, key: bytes = SECRET) -> str:
    """HS256 over exactly these header and payload texts."""
    signing_input = f"{b64(header.encode())}.{b64(payload.encode())}"
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def token(header: dict[str, Any] | None = None, key: bytes = SECRET, **over: Any) -> str:
    return raw_token(json.dumps(header or {"alg": "HS256", "typ": "JWT"}),
                     json.dumps(claims(**over)), key)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def rsa_pem(rsa_key: rsa.RSAPrivateKey) -> bytes:
    return rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def auth(tmp_path: Path, rsa_pem: bytes) -> Authenticator:
    """The primary HS256 secret plus an RS256 key (kid 'rs') and an ES256 key (kid 'es')."""
    (tmp_path / "rs.pem").write_bytes(rsa_pem)
    es = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "es.pem").write_bytes(es)
    keyset = ReloadingKeySet(KeysetSources(primary_secret=SECRET, public_key_files=(
        f"rs:RS256:{tmp_path / 'rs.pem'}", f"es:ES256:{tmp_path / 'es.pem'}")), interval=-1)
    return Authenticator(issuer="ferrohsm", audience="ferrohsm", keyset=keyset)


def rejected(auth: Authenticator, tok: str, reason: str | None = None) -> None:
    with pytest.raises(TokenRejected) as info:
        auth.authenticate([f"Bearer {tok}"])
    assert reason is None or info.value.reason == reason, info.value.reason


def test_sanity_the_forger_makes_valid_tokens(auth: Authenticator) -> None:
    assert auth.authenticate([f"Bearer {token()}"]).subject == "mallory"


# ---- algorithm attacks ------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(auth: Authenticator, alg: str) -> None:
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    rejected(auth, f"{header}.{payload}.")  # empty signature
    rejected(auth, f"{header}.{payload}.{b64(b'x')}")


def test_hs256_signed_with_the_rsa_public_key_is_refused(auth: Authenticator,
                                                        rsa_pem: bytes) -> None:
    """CVE-2015-9235 / CVE-2022-29217 shape: the public key used as an HMAC secret."""
    rejected(auth, token({"alg": "HS256", "kid": "rs"}, key=rsa_pem), "algorithm")
    rejected(auth, token({"alg": "HS256"}, key=rsa_pem), "signature")


def test_rs256_header_cannot_retarget_the_hmac_key(auth: Authenticator) -> None:
    rejected(auth, token({"alg": "RS256"}), "algorithm")  # no kid: the HS256 primary key


def test_es256_key_cannot_be_used_as_es384(auth: Authenticator) -> None:
    rejected(auth, token({"alg": "ES384", "kid": "es"}), "algorithm")


def test_valid_rs256_token_is_accepted(auth: Authenticator, rsa_key: rsa.RSAPrivateKey) -> None:
    tok = issue_token(rsa_key, subject="ci", role="service", algorithm="RS256", kid="rs")
    assert auth.authenticate([f"Bearer {tok}"]).subject == "ci"
    rejected(auth, issue_token(rsa_key, subject="ci", role="service", algorithm="PS256",
                               kid="rs"), "algorithm")


# ---- header attacks ---------------------------------------------------------------------------

@pytest.mark.parametrize("kid", ["../../../../dev/null", "' OR '1'='1", "rs\x00", "", "x" * 500,
                                 "RS", "unknown"])
def test_kid_injection_selects_nothing(auth: Authenticator, kid: str) -> None:
    rejected(auth, token({"alg": "HS256", "kid": kid}))


@pytest.mark.parametrize("header", [{"alg": "HS256", "kid": None}, {"alg": "HS256", "typ": None}])
def test_a_null_kid_or_typ_is_not_taken_for_one_left_out(auth: Authenticator,
                                                         header: dict[str, object]) -> None:
    """A member that is present is a string (RFC 7515): an outside tester's ``"kid": null``
    was verified as if the header had no kid."""
    rejected(auth, token(header), "header")


def test_kid_of_another_key_does_not_verify(auth: Authenticator) -> None:
    rejected(auth, token({"alg": "RS256", "kid": "rs"}), "signature")


def test_crit_header_is_refused(auth: Authenticator) -> None:
    rejected(auth, token({"alg": "HS256", "crit": ["exp"], "exp": 1}), "header")
    rejected(auth, token({"alg": "HS256", "crit": ["b64"], "b64": False}), "header")


@pytest.mark.parametrize("member,value", [
    ("jku", "https://evil.example/jwks.json"), ("x5u", "https://evil.example/cert.pem"),
    ("jwk", {"kty": "oct", "k": "c2VjcmV0"}), ("x5c", ["MIIB"]), ("x5t", "abc"),
    ("cty", "JWT"), ("zip", "DEF"), ("enc", "A256GCM"),
])
def test_key_carrying_and_unknown_headers_are_refused(auth: Authenticator, member: str,
                                                      value: Any) -> None:
    rejected(auth, token({"alg": "HS256", member: value}), "header")


def test_unknown_typ_is_refused(auth: Authenticator) -> None:
    rejected(auth, token({"alg": "HS256", "typ": "JWE"}), "header")


# ---- encoding attacks -------------------------------------------------------------------------

def test_duplicate_claim_members_are_refused(auth: Authenticator) -> None:
    """A validly signed payload with two ``role`` members: parsers disagree on which wins."""
    body = json.dumps(claims())[:-1] + ', "role": "administrator"}'
    tok = raw_token(json.dumps({"alg": "HS256"}), body)
    assert jwt.decode(tok, SECRET, algorithms=["HS256"], audience="ferrohsm")["role"] == \
        "administrator"  # what a lenient parser would have granted
    rejected(auth, tok, "malformed")


def test_duplicate_header_members_are_refused(auth: Authenticator) -> None:
    rejected(auth, raw_token('{"alg": "none", "alg": "HS256"}', json.dumps(claims())),
             "malformed")


def test_oversized_token_is_refused_before_any_work(auth: Authenticator) -> None:
    rejected(auth, token(pad="x" * 9000), "oversized")


def test_padded_signature_does_not_bypass_the_deny_list(auth: Authenticator) -> None:
    """PyJWT accepts ``sig=``: a deny-list keyed by token text would miss the respelling."""
    tok = token()
    auth.authenticate([f"Bearer {tok}"])
    auth.revoke("adv-1")
    for variant in (tok, tok + "=", tok + "==", tok.replace(".", "=.", 2)):
        rejected(auth, variant)


def test_non_canonical_base64_is_refused(auth: Authenticator) -> None:
    head, body, sig = token().split(".")
    last = sig[-1]
    alphabet = "AEIMQUYcgkosw048"  # for a 32-byte signature the last char carries 2 spare bits
    twin = next(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                if c != last and base64.urlsafe_b64decode(sig[:-1] + c + "=") ==
                base64.urlsafe_b64decode(sig + "="))
    assert last in alphabet
    rejected(auth, f"{head}.{body}.{sig[:-1]}{twin}", "malformed")


@pytest.mark.parametrize("payload", ['{"exp": NaN}', '{"exp": Infinity}',
                                     '{"exp": ' + "9" * 5000 + "}", "[1, 2]", '"string"'])
def test_hostile_json_values_are_refused(auth: Authenticator, payload: str) -> None:
    rejected(auth, raw_token('{"alg": "HS256"}', payload))


def test_whitespace_and_extra_segments_are_refused(auth: Authenticator) -> None:
    tok = token()
    for variant in (tok + ".x", tok.replace(".", ". ", 1), tok + "\n.x", f"{tok} {tok}"):
        with pytest.raises((TokenRejected, BadRequest)):
            auth.authenticate([f"Bearer {variant}"])


# ---- claim attacks ----------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["Administrator", "ADMINISTRATOR", "administrator ", "admin",
                                  "root", "", ["administrator"], {"name": "administrator"}])
def test_role_case_and_unknown_roles_grant_nothing(auth: Authenticator, role: Any) -> None:
    rejected(auth, token(role=role), "role")


@pytest.mark.parametrize("claim,value", [("exp", str(NOW + 300)), ("exp", NOW + 300.5),
                                         ("iat", None), ("iat", False), ("nbf", "now")])
def test_claims_of_the_wrong_type_are_refused(auth: Authenticator, claim: str, value: Any) -> None:
    rejected(auth, token(**{claim: value}))


def test_token_from_another_issuer_is_refused(auth: Authenticator) -> None:
    rejected(auth, token(iss="https://ferrohsm.evil"), "issuer")


def test_overlong_lifetime_is_refused(auth: Authenticator) -> None:
    rejected(auth, token(exp=int(time.time()) + 86400), "lifetime")


def test_bound_token_replayed_without_its_certificate_is_refused(auth: Authenticator) -> None:
    thumb = b64(hashlib.sha256(b"the right certificate").digest())
    tok = token(cnf={"x5t#S256": thumb})
    assert auth.authenticate([f"Bearer {tok}"], client_fingerprint=thumb)
    with pytest.raises(TokenRejected, match="bound"):
        auth.authenticate([f"Bearer {tok}"])
    with pytest.raises(TokenRejected, match="bound"):
        auth.authenticate([f"Bearer {tok}"],
                          client_fingerprint=b64(hashlib.sha256(b"another").digest()))


# ---- HTTP-level attacks (the real application, in process) -------------------------------------

@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from ferrohsm import app as wiring
    data = tmp_path_factory.mktemp("adv")
    config = load_config(env={}, overrides={("storage", "key_store"): "memory",
                                            ("storage", "data_dir"): str(data)})
    rt = wiring.build_runtime(config, Secrets(b"m" * 32, SECRET, b"h" * 32))
    yield rt
    wiring.shutdown(rt, None)


def call(rt: Any, method: str, target: str, tok: str | None = None, body: Any = None,
         headers: list[tuple[str, str]] | None = None) -> Response:
    path, _, qs = target.partition("?")
    query: dict[str, list[str]] = {}
    for part in filter(None, qs.split("&")):
        name, _, value = part.partition("=")
        query.setdefault(name, []).append(value)
    fields = [("Host", "x"), *(headers or [])]
    if tok is not None:
        fields.append(("Authorization", f"Bearer {tok}"))
    raw = json.dumps(body).encode() if body is not None else b""
    if raw:
        fields.append(("Content-Type", "application/json"))
    req = Request(method, target, path, query, Headers(fields), raw, "192.0.2.10", 4000, None,
                  "req-adv", time.time())
    return rt.app(req)  # type: ignore[no-any-return]  # rt is the fixture's Any


def status_code(resp: Response) -> tuple[int, str]:
    body = json.loads(resp.body) if resp.body else {}
    return resp.status, body.get("error", {}).get("code", "")


def test_role_in_a_header_grants_nothing(runtime: Any) -> None:
    svc = issue_token(SECRET, subject="svc", role="service")
    resp = call(runtime, "POST", "/v1/keys", svc, {"algorithm": "aes-256-gcm", "usage": "encrypt"},
                headers=[("X-Role", "administrator"), ("X-FerroHSM-Role", "administrator"),
                         ("Role", "administrator")])
    assert status_code(resp) == (403, "forbidden")


def test_role_in_the_body_grants_nothing(runtime: Any) -> None:
    svc = issue_token(SECRET, subject="svc", role="service")
    resp = call(runtime, "POST", "/v1/keys", svc, {"algorithm": "aes-256-gcm", "usage": "encrypt",
                                                   "role": "administrator"})
    assert resp.status in (400, 403)


def test_token_in_the_query_string_is_never_accepted(runtime: Any) -> None:
    admin = issue_token(SECRET, subject="adm", role="administrator")
    assert call(runtime, "GET", f"/v1/keys?access_token={admin}").status in (400, 401)
    assert call(runtime, "GET", f"/v1/keys?access_token={admin}", admin).status == 400


def test_two_authorization_headers_are_400(runtime: Any) -> None:
    admin = issue_token(SECRET, subject="adm", role="administrator")
    resp = call(runtime, "GET", "/v1/keys", admin, headers=[("Authorization", f"Bearer {admin}")])
    assert status_code(resp) == (400, "bad_request")


@pytest.mark.parametrize("value", ["Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer ", "Digest x=1"])
def test_non_bearer_or_empty_gets_the_bearer_challenge(runtime: Any, value: str) -> None:
    resp = call(runtime, "GET", "/v1/keys", headers=[("Authorization", value)])
    assert status_code(resp) == (401, "unauthenticated")
    assert ("WWW-Authenticate", 'Bearer error="invalid_token"') in resp.headers
