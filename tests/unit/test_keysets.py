"""Keysets: every source, every refusal, and hot reload (add a kid, remove a kid, a bad file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ferrohsm.auth.keysets import (
    PRIMARY_KID,
    KeysetError,
    KeysetSources,
    ReloadingKeySet,
    load_keyset,
)

SECRET = b"s" * 32
PUBLIC = serialization.PublicFormat.SubjectPublicKeyInfo
PEM = serialization.Encoding.PEM


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {"rsa": rsa.generate_private_key(65537, 2048),
            "p256": ec.generate_private_key(ec.SECP256R1()),
            "p384": ec.generate_private_key(ec.SECP384R1())}


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(PEM, PUBLIC)


def jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algo = jwt.get_algorithm_by_name(alg)
    return {**json.loads(algo.to_jwk(key.public_key())), "kid": kid, "alg": alg, "use": "sig"}


def write_jwks(path: Path, entries: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": entries}))
    os.replace(tmp, path)  # a new inode: the watcher sees the change whatever the mtime grain


def test_primary_secret_verifies_tokens_without_kid() -> None:
    keyset = load_keyset(KeysetSources(primary_secret=SECRET))
    key = keyset.select(None)
    assert key is not None and key.alg == "HS256" and key.kid == PRIMARY_KID
    assert keyset.select("anything") is None and keyset.kids() == set()


def test_named_hs256_secrets_come_from_the_environment() -> None:
    env = {"CI_SECRET": "c" * 40}
    keyset = load_keyset(KeysetSources(hs256_envs=("ci:CI_SECRET",), env=env))
    assert keyset.select("ci").alg == "HS256"  # type: ignore[union-attr]  # None fails the test too
    assert keyset.select(None) is None  # no primary secret: a token must name its kid


@pytest.mark.parametrize("entry,env,needle", [
    ("ci:MISSING", {}, "is not set"),
    ("ci:SHORT", {"SHORT": "x" * 31}, "at least 32 bytes"),
    ("no-separator", {}, "kid:ENV_VAR"),
])
def test_bad_hs256_entries_are_refused(entry: str, env: dict[str, str], needle: str) -> None:
    with pytest.raises(KeysetError, match=needle):
        load_keyset(KeysetSources(hs256_envs=(entry,), env=env))


def test_short_primary_secret_is_refused() -> None:
    with pytest.raises(KeysetError, match="at least 32"):
        load_keyset(KeysetSources(primary_secret=b"short"))


def test_pem_files_pin_their_algorithm(tmp_path: Path, keys: dict[str, Any]) -> None:
    files = {}
    for name, key in keys.items():
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_bytes(pem(key))
    keyset = load_keyset(KeysetSources(public_key_files=(
        f"r1:RS256:{files['rsa']}", f"p1:PS256:{files['rsa']}",
        f"e1:ES256:{files['p256']}", f"e2:ES384:{files['p384']}")))
    assert {k: keyset.keys[k].alg for k in keyset.kids()} == {
        "r1": "RS256", "p1": "PS256", "e1": "ES256", "e2": "ES384"}


@pytest.mark.parametrize("alg,which,needle", [
    ("ES384", "p256", "not a usable ES384"),   # wrong curve
    ("ES256", "rsa", "not a usable ES256"),    # wrong key type
    ("RS256", "p256", "not a usable RS256"),
    ("HS256", "rsa", "algorithm must be one of"),  # a public key never becomes an HMAC secret
])
def test_pem_key_must_fit_its_algorithm(tmp_path: Path, keys: dict[str, Any], alg: str,
                                        which: str, needle: str) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(pem(keys[which]))
    with pytest.raises(KeysetError, match=needle):
        load_keyset(KeysetSources(public_key_files=(f"k:{alg}:{path}",)))


def test_private_key_file_is_refused_without_quoting_it(tmp_path: Path,
                                                        keys: dict[str, Any]) -> None:
    body = keys["p256"].private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    path = tmp_path / "private.pem"
    path.write_bytes(body)
    with pytest.raises(KeysetError, match="PRIVATE") as info:
        load_keyset(KeysetSources(public_key_files=(f"k:ES256:{path}",)))
    assert "BEGIN" not in info.value.message and body.decode()[40:80] not in info.value.message


def test_keyset_files_writable_by_others_are_refused(tmp_path: Path,
                                                    keys: dict[str, Any]) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(pem(keys["p256"]))
    path.chmod(0o666)
    with pytest.raises(KeysetError, match="only its owner"):
        load_keyset(KeysetSources(public_key_files=(f"k:ES256:{path}",)))


def test_small_rsa_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "small.pem"
    path.write_bytes(pem(rsa.generate_private_key(65537, 1024)))  # noqa: S505  the weak key under test
    with pytest.raises(KeysetError, match="at least 2048"):
        load_keyset(KeysetSources(public_key_files=(f"k:RS256:{path}",)))


def test_jwks_file_loads_each_kid_with_its_alg(tmp_path: Path, keys: dict[str, Any]) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, [jwk(keys["rsa"], "r", "RS256"), jwk(keys["p384"], "e", "ES384")])
    keyset = load_keyset(KeysetSources(jwks_file=str(path)))
    assert keyset.keys["r"].alg == "RS256" and keyset.keys["e"].alg == "ES384"


@pytest.mark.parametrize("mutate,needle", [
    (lambda k: k.pop("alg"), "'alg' must be one of"),
    (lambda k: k.pop("kid"), "no string 'kid'"),
    (lambda k: k.update(alg="HS256"), "'alg' must be one of"),
    (lambda k: k.update(alg="ES256"), "match 'kty'"),
    (lambda k: k.update(alg="none"), "'alg' must be one of"),
    (lambda k: k.update(use="enc"), "'use' must be 'sig'"),
    (lambda k: k.update(d="AAAA"), "private key members"),
    (lambda k: k.update(kid="a:b"), "without ':'"),
    (lambda k: k.update(n="AQAB"), "not a valid RSA key|at least 2048"),
])
def test_bad_jwks_entries_are_refused(tmp_path: Path, keys: dict[str, Any], mutate: Any,
                                      needle: str) -> None:
    entry = jwk(keys["rsa"], "r", "RS256")
    mutate(entry)
    path = tmp_path / "jwks.json"
    write_jwks(path, [entry])
    with pytest.raises(KeysetError, match=needle):
        load_keyset(KeysetSources(jwks_file=str(path)))


def test_oct_keys_in_jwks_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, [{"kty": "oct", "kid": "h", "alg": "HS256", "k": "c2VjcmV0" * 6}])
    with pytest.raises(KeysetError) as info:
        load_keyset(KeysetSources(jwks_file=str(path)))
    assert "c2VjcmV0" not in info.value.message


@pytest.mark.parametrize("text", ['{"keys": [}', '{"keys": [], "keys": []}', '[]', '{"k": 1}'])
def test_malformed_jwks_documents_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(text)
    with pytest.raises(KeysetError):
        load_keyset(KeysetSources(jwks_file=str(path)))


def test_a_kid_defined_twice_is_refused(tmp_path: Path, keys: dict[str, Any]) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, [jwk(keys["rsa"], "same", "RS256"), jwk(keys["p256"], "same", "ES256")])
    with pytest.raises(KeysetError, match="defined twice"):
        load_keyset(KeysetSources(jwks_file=str(path)))


def test_an_empty_keyset_is_refused() -> None:
    with pytest.raises(KeysetError, match="no token verification keys"):
        load_keyset(KeysetSources())


# ---- reload -----------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def watched(tmp_path: Path, keys: dict[str, Any]) -> tuple[ReloadingKeySet, Path, Clock,
                                                           list[tuple[str, str]]]:
    path = tmp_path / "jwks.json"
    write_jwks(path, [jwk(keys["rsa"], "r1", "RS256")])
    events: list[tuple[str, str]] = []
    clock = Clock()
    watcher = ReloadingKeySet(KeysetSources(primary_secret=SECRET, jwks_file=str(path)),
                              interval=2.0, clock=clock,
                              on_event=lambda outcome, msg: events.append((outcome, msg)))
    return watcher, path, clock, events


def test_reload_adds_a_kid_when_the_file_changes(watched: Any, keys: dict[str, Any]) -> None:
    watcher, path, clock, events = watched
    write_jwks(path, [jwk(keys["rsa"], "r1", "RS256"), jwk(keys["p256"], "e1", "ES256")])
    clock.now += 1.0
    assert watcher.current().kids() == {"r1"}  # not checked before the interval
    clock.now += 1.5
    keyset = watcher.current()
    assert keyset.kids() == {"r1", "e1"} and keyset.generation == 1
    assert events == [("success", events[0][1])] and "added ['e1']" in events[0][1]


def test_reload_removes_a_kid(watched: Any, keys: dict[str, Any]) -> None:
    watcher, path, clock, events = watched
    write_jwks(path, [jwk(keys["p256"], "e1", "ES256")])
    clock.now += 5
    assert watcher.current().kids() == {"e1"}
    assert watcher.current().select("r1") is None
    assert "removed ['r1']" in events[-1][1]


def test_malformed_new_keyset_keeps_the_old_one(watched: Any) -> None:
    watcher, path, clock, events = watched
    path.write_text('{"keys": [ {"kid": "broken"')
    clock.now += 5
    keyset = watcher.current()
    assert keyset.kids() == {"r1"} and keyset.generation == 0
    assert watcher.reload_failures == 1 and events[-1][0] == "error"
    clock.now += 5
    watcher.current()
    assert watcher.reload_failures == 1  # one attempt (and one audit record) per change


def test_explicit_reload_for_sighup(watched: Any, keys: dict[str, Any]) -> None:
    watcher, path, _, events = watched
    write_jwks(path, [jwk(keys["p384"], "e2", "ES384")])
    assert watcher.reload("SIGHUP") is True
    assert watcher.current().kids() == {"e2"} and "SIGHUP" in events[-1][1]


def test_a_reload_that_changes_nothing_keeps_the_generation(watched: Any,
                                                            keys: dict[str, Any]) -> None:
    """A SIGHUP (for the TLS files, say) or a rewritten file with the same keys: the keyset in
    force stays, so the tokens verified under its generation stay cached (soak tester: every
    SIGHUP emptied the verified-token cache)."""
    watcher, path, clock, events = watched
    before = watcher.current()
    assert watcher.reload("SIGHUP") is True
    assert watcher.current() is before and "unchanged" in events[-1][1]
    write_jwks(path, [jwk(keys["rsa"], "r1", "RS256")])  # rewritten, the same key
    os.utime(path, (1, 1))  # and surely a new modification time
    clock.now += 5
    assert watcher.current() is before and watcher.reloads == 2
    write_jwks(path, [jwk(keys["rsa"], "r1", "RS256"), jwk(keys["p256"], "e1", "ES256")])
    assert watcher.reload() is True and watcher.current().generation == before.generation + 1


def test_a_failing_audit_hook_does_not_undo_the_reload(watched: Any,
                                                       keys: dict[str, Any]) -> None:
    watcher, path, _, _ = watched

    def broken(outcome: str, message: str) -> None:
        raise RuntimeError("audit down")
    watcher.set_event_hook(broken)
    write_jwks(path, [jwk(keys["p384"], "e2", "ES384")])
    assert watcher.reload() is True and watcher.current().kids() == {"e2"}


def test_a_broken_keyset_at_start_up_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text("not json")
    with pytest.raises(KeysetError):
        ReloadingKeySet(KeysetSources(jwks_file=str(path)))
