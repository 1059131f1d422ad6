"""Authenticator: header rules, claims, the cache, the deny-list and mTLS binding."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest

from ferrohsm.auth.authn import Authenticator, TokenRejected, build_authenticator, issue_token
from ferrohsm.auth.denylist import DenyList
from ferrohsm.auth.keysets import KeysetSources, ReloadingKeySet
from ferrohsm.config import load_config
from ferrohsm.domain.errors import BadRequest, ConfigError, Unauthenticated, Unavailable
from ferrohsm.domain.model import Role

ROOT = Path(__file__).resolve().parents[2]

SECRET = b"k" * 32
NOW = 1_800_000_000
THUMB = base64.urlsafe_b64encode(hashlib.sha256(b"cert").digest()).rstrip(b"=").decode()


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(claims: Any, header: Any = None, secret: bytes = SECRET) -> str:
    """Sign arbitrary header/claims TEXT with HS256 (raw, so duplicates etc. survive)."""
    head = header if isinstance(header, str) else json.dumps(header or {"alg": "HS256",
                                                                        "typ": "JWT"})
    body = claims if isinstance(claims, str) else json.dumps(claims)
    signing_input = f"{b64(head.encode())}.{b64(body.encode())}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def claims(**over: Any) -> dict[str, Any]:
    base = {"iss": "ferrohsm", "aud": "ferrohsm", "sub": "alice", "role": "operator",
            "iat": NOW, "exp": NOW + 300, "jti": "j-1"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(clock: Clock) -> Authenticator:
    return Authenticator(SECRET, issuer="ferrohsm", audience="ferrohsm", clock=clock)


def bearer(token: str) -> list[str]:
    return [f"Bearer {token}"]


# ---- header rules ---------------------------------------------------------------------------

def test_valid_token_gives_its_principal(auth: Authenticator) -> None:
    p = auth.authenticate(bearer(forge(claims(role="service", tags=["prod"], sid="s-9"))))
    assert (p.subject, p.role, p.tags, p.session, p.token_id) == (
        "alice", Role.SERVICE, frozenset({"prod"}), "s-9", "j-1")


def test_two_authorization_headers_are_a_bad_request(auth: Authenticator) -> None:
    token = forge(claims())
    with pytest.raises(BadRequest):
        auth.authenticate(bearer(token) * 2)


@pytest.mark.parametrize("value", ["Basic YWxhZGRpbjpvcGVuc2VzYW1l", "Bearer", "Bearer    ",
                                   "Token abc", "", "Bearerabc.def.ghi"])
def test_non_bearer_or_empty_is_401(auth: Authenticator, value: str) -> None:
    with pytest.raises(Unauthenticated):
        auth.authenticate([value])


def test_missing_header_is_401(auth: Authenticator) -> None:
    with pytest.raises(Unauthenticated, match="missing"):
        auth.authenticate([])


def test_scheme_is_case_insensitive(auth: Authenticator) -> None:
    assert auth.authenticate([f"bearer {forge(claims())}"]).subject == "alice"


# ---- claims ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["iss", "aud", "sub", "role", "iat", "exp"])
def test_each_required_claim(auth: Authenticator, name: str) -> None:
    with pytest.raises(TokenRejected, match="lacks claim"):
        auth.verify(forge(claims(**{name: None})))


@pytest.mark.parametrize("over,reason", [
    ({"iss": "ferrohsm "}, "issuer"), ({"iss": "FERROHSM"}, "issuer"),
    ({"iss": ["ferrohsm"]}, "issuer"),
    ({"aud": "other"}, "audience"), ({"aud": []}, "audience"), ({"aud": [1]}, "audience"),
    ({"exp": str(NOW + 300)}, "claims"), ({"exp": float(NOW + 300)}, "claims"),
    ({"iat": True}, "claims"), ({"nbf": "0"}, "claims"),
    ({"role": ["administrator"]}, "role"), ({"role": "Administrator"}, "role"),
    ({"role": "root"}, "role"), ({"role": " operator"}, "role"),
    ({"sub": 7}, "claims"), ({"sub": ""}, "claims"), ({"sub": "a\nb"}, "claims"),
    ({"sub": "system"}, "claims"), ({"sub": "Anonymous"}, "claims"),  # the server's own
    ({"sub": "system "}, "claims"), ({"sub": "anonymous."}, "claims"),  # ...as a reader sees
    ({"sub": "anonymous\u2800"}, "claims"), ({"sub": "\uff53ystem"}, "claims"),
    ({"sub": "\u0455\u0443\u0455t\u0435m"}, "claims"),  # Cyrillic letters that look Latin
    ({"sub": "\u0430n\u03bfnym\u03bfus"}, "claims"),  # Cyrillic a, Greek omicrons
    ({"tags": "prod"}, "claims"), ({"tags": ["PROD"]}, "claims"), ({"tags": [1]}, "claims"),
    ({"jti": 5}, "claims"), ({"sid": ["x"]}, "claims"),
    ({"cnf": {"jkt": "abc"}}, "claims"), ({"cnf": {"x5t#S256": "short"}}, "claims"),
    ({"cnf": "x"}, "claims"),
])
def test_wrong_claims_are_rejected(auth: Authenticator, over: dict[str, Any], reason: str) -> None:
    with pytest.raises(TokenRejected) as info:
        auth.verify(forge(claims(**over)))
    assert info.value.reason == reason


def test_tags_scope_service_tokens_only(auth: Authenticator) -> None:
    """Tags on another role limit nothing (permissions.may_see), so they are not kept: whoami
    must not show a scope that does not hold."""
    assert auth.verify(forge(claims(role="operator", tags=["prod"]))).tags is None
    assert auth.verify(forge(claims(role="service", tags=["prod"]))).tags == frozenset({"prod"})


def test_audience_list_containing_ours_is_fine(auth: Authenticator) -> None:
    assert auth.verify(forge(claims(aud=["other", "ferrohsm"]))).subject == "alice"


@pytest.mark.parametrize("iat,exp,ok", [
    (NOW - 60, NOW - 10, True),       # expired 10 s ago: inside the 30 s leeway
    (NOW - 100, NOW - 31, False),     # beyond the leeway
    (NOW + 20, NOW + 300, True),      # issued slightly in the future (clock skew)
    (NOW + 40, NOW + 300, False),
    (NOW, NOW + 900, True),           # the longest lifetime
    (NOW, NOW + 901, False),
    (NOW, NOW, False),                # exp <= iat
])
def test_times_and_lifetime(auth: Authenticator, iat: int, exp: int, ok: bool) -> None:
    token = forge(claims(iat=iat, exp=exp))
    if ok:
        auth.verify(token)
    else:
        with pytest.raises(TokenRejected):
            auth.verify(token)


def test_nbf_is_honoured(auth: Authenticator, clock: Clock) -> None:
    token = forge(claims(nbf=NOW + 100))
    with pytest.raises(TokenRejected, match="not yet valid"):
        auth.verify(token)
    clock.now += 80
    assert auth.verify(token).subject == "alice"


def test_leeway_is_configurable(clock: Clock) -> None:
    strict = Authenticator(SECRET, issuer="ferrohsm", audience="ferrohsm", leeway=0, clock=clock)
    with pytest.raises(TokenRejected, match="expired"):
        strict.verify(forge(claims(iat=NOW - 60, exp=NOW - 1)))


def test_require_jti(clock: Clock) -> None:
    auth = Authenticator(SECRET, issuer="ferrohsm", audience="ferrohsm", require_jti=True,
                         clock=clock)
    with pytest.raises(TokenRejected, match="jti"):
        auth.verify(forge(claims(jti=None)))


@pytest.mark.parametrize("claim", ["sid", "jti"])
def test_a_lone_surrogate_in_a_session_or_token_id_is_refused(auth: Authenticator,
                                                             claim: str) -> None:
    """It would reach audit records and answers, which are UTF-8 and cannot carry one."""
    with pytest.raises(TokenRejected, match=f"invalid {claim} claim"):
        auth.verify(forge(claims(**{claim: "x\ud800y"})))
    assert auth.verify(forge(claims(**{claim: "x-\u00e9-y"}))).subject  # other text is fine


# ---- cache ----------------------------------------------------------------------------------

def test_cache_hits_and_expiry(auth: Authenticator, clock: Clock) -> None:
    token = forge(claims(exp=NOW + 60))
    auth.verify(token)
    auth.verify(token)
    assert auth.stats()["cache_hits"] == 1 and auth.stats()["cache_misses"] == 1
    clock.now += 60 + 30
    with pytest.raises(TokenRejected, match="expired"):
        auth.verify(token)


def test_cache_is_bounded(clock: Clock) -> None:
    auth = Authenticator(SECRET, issuer="ferrohsm", audience="ferrohsm", cache_entries=50,
                         clock=clock)
    for i in range(500):
        auth.verify(forge(claims(jti=f"j{i}")))
    assert auth.stats()["cache_entries"] <= 50


def test_cache_hit_still_consults_the_deny_list(auth: Authenticator) -> None:
    token = forge(claims(jti="to-revoke"))
    auth.verify(token)
    auth.revoke("to-revoke")
    with pytest.raises(TokenRejected, match="revoked"):
        auth.verify(token)
    assert auth.stats()["cache_hits"] == 1  # refused on the cached path, not by re-verifying


def test_cache_keeps_no_token_text(auth: Authenticator) -> None:
    token = forge(claims())
    auth.verify(token)
    assert all(isinstance(k, bytes) and len(k) == 32 for k in auth._cache)


# ---- mTLS binding ---------------------------------------------------------------------------

def test_bound_token_needs_the_matching_certificate(auth: Authenticator) -> None:
    token = forge(claims(cnf={"x5t#S256": THUMB}))
    assert auth.verify(token, client_fingerprint=THUMB).subject == "alice"
    with pytest.raises(TokenRejected, match="bound"):
        auth.verify(token, client_fingerprint=THUMB[::-1])  # cached, still checked
    with pytest.raises(TokenRejected, match="bound"):
        auth.verify(token)


def test_roles_can_require_bound_tokens(clock: Clock) -> None:
    auth = Authenticator(SECRET, issuer="ferrohsm", audience="ferrohsm", clock=clock,
                         bound_roles=["service"])
    with pytest.raises(TokenRejected, match="must be bound"):
        auth.verify(forge(claims(role="service")), client_fingerprint=THUMB)
    ok = forge(claims(role="service", cnf={"x5t#S256": THUMB}))
    assert auth.verify(ok, client_fingerprint=THUMB).role is Role.SERVICE
    assert auth.verify(forge(claims(role="auditor"))).role is Role.AUDITOR


# ---- keyset interplay -----------------------------------------------------------------------

def test_removing_a_kid_drops_its_cached_tokens(tmp_path: Path, clock: Clock) -> None:
    env = {"A": "a" * 32, "B": "b" * 32}
    sources = KeysetSources(hs256_envs=("a:A", "b:B"), env=env)
    keyset = ReloadingKeySet(sources, interval=-1)
    auth = Authenticator(issuer="ferrohsm", audience="ferrohsm", keyset=keyset, clock=clock)
    token = forge(claims(), {"alg": "HS256", "kid": "a"}, secret=b"a" * 32)
    auth.verify(token)
    object.__setattr__(sources, "hs256_envs", ("b:B",))
    assert keyset.reload("test")
    with pytest.raises(TokenRejected, match="unknown key id"):
        auth.verify(token)


def test_issue_token_round_trip(auth: Authenticator) -> None:
    token = issue_token(SECRET, subject="bob", role="auditor", ttl=60, now=NOW, sid="s",
                        cnf_thumbprint=THUMB)
    p = auth.verify(token, client_fingerprint=THUMB)
    assert (p.subject, p.role, p.session) == ("bob", Role.AUDITOR, "s")
    with pytest.raises(BadRequest):
        issue_token(SECRET, subject="bob", role="Administrator")


def test_stats_are_numbers(auth: Authenticator) -> None:
    assert all(isinstance(v, int) for v in auth.stats().values())


def test_build_authenticator_from_config(tmp_path: Path) -> None:
    config = load_config(env={"FERROHSM_AUTH_HS256_SECRET_ENVS": "ci:CI_SECRET",
                              "FERROHSM_AUTH_REQUIRE_BOUND_TOKENS_FOR_ROLES": "service"})
    auth = build_authenticator(config.auth, SECRET, str(tmp_path), env={"CI_SECRET": "c" * 32})
    token = jwt.encode(claims(iat=None, exp=None) | {"iat": 0, "exp": 1}, "c" * 32,
                       headers={"kid": "ci"})
    with pytest.raises(TokenRejected, match="expired"):  # found its key; only time failed
        auth.verify(token)
    assert auth.bound_roles == {Role.SERVICE}
    auth.revoke("j-1")
    assert (tmp_path / "revoked-tokens.json").exists()


def test_a_deny_list_file_in_a_missing_directory_is_refused_at_start(tmp_path: Path) -> None:
    """Not found at the first revocation, which would then be refused (503)."""
    config = load_config(env={"FERROHSM_AUTH_DENY_LIST_FILE": str(tmp_path / "no" / "x.json")})
    with pytest.raises(ConfigError, match=r"\[auth\]\.deny_list_file .*its directory does not"):
        build_authenticator(config.auth, SECRET, str(tmp_path))
    config = load_config(env={"FERROHSM_AUTH_DENY_LIST_FILE": str(tmp_path / "x.json")})
    build_authenticator(config.auth, SECRET, str(tmp_path)).revoke("j-1")
    assert (tmp_path / "x.json").exists()


# ---- deny-list ------------------------------------------------------------------------------

def test_deny_list_persists_0600_and_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    dl = DenyList(path)
    dl.revoke("jti-1", until=2000.0, now=1000.0)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = DenyList(path)
    assert again.is_revoked("jti-1", 1500.0) and not again.is_revoked("jti-2", 1500.0)


def test_deny_list_entries_are_read_whole_for_a_backup(tmp_path: Path) -> None:
    """A backup archive carries the revocations in force: what another process wrote included
    (the file is read, not only this process's memory), the expired left out."""
    path = tmp_path / "revoked.json"
    reader, writer = DenyList(path, check_interval=3600.0), DenyList(path)
    reader.revoke("mine", until=5000.0, now=1000.0)
    writer.revoke_all({"theirs": 6000.0, "old": 1500.0}, now=1000.0)
    assert reader.entries(2000.0) == {"mine": 5000.0, "theirs": 6000.0}
    assert DenyList().entries(0.0) == {}
    path.write_text("not json")
    with pytest.raises(Unavailable):  # never a backup silently without its revocations
        reader.entries(2000.0)


def test_deny_list_entries_expire(tmp_path: Path) -> None:
    dl = DenyList(tmp_path / "revoked.json")
    dl.revoke("old", until=1100.0, now=1000.0)
    dl.revoke("new", until=5000.0, now=1000.0)
    assert dl.prune(2000.0) == 1 and len(dl) == 1
    assert json.loads((tmp_path / "revoked.json").read_text())["revoked"] == {"new": 5000.0}


def test_a_revocation_outlives_a_wall_clock_stepped_ahead_and_back(tmp_path: Path) -> None:
    """A time tester stepped the clock two hours ahead, revoked another token (which dropped
    every entry expired by that clock), stepped it back: the first token was good again."""
    from ferrohsm.auth.denylist import KEEP_EXPIRED

    path = tmp_path / "revoked.json"
    dl = DenyList(path)
    dl.revoke("victim", until=1900.0, now=1000.0)
    dl.revoke("other", until=9000.0, now=1000.0 + 7200)  # the clock two hours ahead
    assert dl.is_revoked("victim", 1100.0) and DenyList(path).is_revoked("victim", 1100.0)
    dl.revoke("later", until=9900.0, now=1900.0 + KEEP_EXPIRED + 1)  # a day past: it goes
    assert not DenyList(path).is_revoked("victim", 1100.0)


def test_deny_list_sees_revocations_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    reader, writer = DenyList(path, check_interval=0.0), DenyList(path)
    assert not reader.is_revoked("x", 1000.0)
    writer.revoke("x", until=9999.0, now=1000.0)
    assert reader.is_revoked("x", 1001.0)


def test_another_process_revocation_is_seen_at_once_without_a_stat(tmp_path: Path) -> None:
    """The shared change counter (mmap of <file>.lock): a revocation by another process is
    honoured on the very next check, although the once-a-second stat is not due."""
    path = tmp_path / "revoked.json"
    reader = DenyList(path)
    assert not reader.is_revoked("x", 1000.0)
    code = ("import sys; from ferrohsm.auth.denylist import DenyList; "
            "DenyList(sys.argv[1]).revoke('x', until=9999.0, now=1000.0)")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=ROOT)
    assert reader.is_revoked("x", 1000.0)  # same instant: the stat interval has not passed


def test_a_file_replaced_by_other_means_is_read_within_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    reader = DenyList(path)
    assert not reader.is_revoked("y", 1000.0)
    path.write_text('{"version": 1, "revoked": {"y": 9999.0}}')  # no counter bump
    assert not reader.is_revoked("y", 1000.5)
    assert reader.is_revoked("y", 1001.5)


def test_unreadable_deny_list_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    path.write_text('{"version": 1, "revoked": {"x": "soon"}}')
    with pytest.raises(ConfigError):
        DenyList(path)


def test_a_broken_file_later_keeps_the_entries(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    dl = DenyList(path, check_interval=0.0)
    dl.revoke("x", until=9999.0, now=1000.0)
    path.write_text("{torn")
    assert dl.is_revoked("x", 1001.0)


def test_deny_list_refuses_bad_jti() -> None:
    with pytest.raises(ValueError):
        DenyList().revoke("", 1.0, 0.0)
