"""The transit surface's translation pieces (api/transit): Vault bodies, key types, signature
options and text, the error shape, and the parser's one allowance for Vault's Go client."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from ferrohsm.api.parse import Limits, parse_head
from ferrohsm.api.transit import envelope, is_vault
from ferrohsm.api.transit.body import Body
from ferrohsm.api.transit.keyinfo import key_info, native_type
from ferrohsm.api.transit.text import (
    canonical_ciphertext,
    format_signature,
    parse_signature,
    scheme,
    to_vault,
)
from ferrohsm.crypto.ops import parse_token
from ferrohsm.domain import lifecycle as lc
from ferrohsm.domain.errors import (
    ApprovalRequired,
    BadRequest,
    Conflict,
    MethodNotAllowed,
    NotFound,
    UnsupportedMediaType,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def head(path: str, content_type: str | None) -> bytes:
    lines = [f"PUT {path} HTTP/1.1", "Host: x", "Content-Length: 2"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    return "\r\n".join(lines).encode()


def test_only_transit_bodies_may_come_without_a_json_content_type() -> None:
    """Vault reads any body as JSON; the native API takes only application/json."""
    for declared in (None, "text/plain", "application/x-www-form-urlencoded"):
        assert parse_head(head("/v1/transit/encrypt/k", declared), Limits()).content_length == 2
    for declared in (None, "text/plain"):
        with pytest.raises(UnsupportedMediaType):
            parse_head(head("/v1/keys/k/encrypt", declared), Limits())
    assert parse_head(head("/v1/transit/keys/", None), Limits()).path == "/v1/transit/keys"
    assert is_vault("/v1/transit/keys") and not is_vault("/v1/transitx")


def test_bodies_are_weakly_typed_and_unknown_members_warn() -> None:
    body = Body({"bits": "256", "prehashed": "true", "plaintext": "", "extra": 1},
                ("bits", "prehashed", "plaintext"))
    assert body.integer("bits", 1, 512) == 256 and body.flag("prehashed") is True
    assert body.base64("plaintext") == b""
    assert body.warnings() == ["Endpoint ignored these unrecognized parameters: [extra]"]
    with pytest.raises(BadRequest, match="base64"):
        Body({"p": "***"}, ("p",)).base64("p")
    with pytest.raises(BadRequest, match="integer"):
        Body({"n": True}, ("n",)).integer("n", 0, 9)
    with pytest.raises(BadRequest, match="convergent encryption is not supported by FerroHSM"):
        Body({"c": True}, ("c",)).unsupported("c", feature="convergent encryption")
    Body({"c": False, "d": ""}, ("c", "d")).unsupported("c", "d")  # defaults ask for nothing
    with pytest.raises(BadRequest, match="object"):
        Body([1], ())


def test_booleans_and_zero_durations_are_read_as_vaults_weak_decoding_reads_them() -> None:
    """Vault takes ``prehashed: 1`` and ``auto_rotate_period: "0s"`` (zero: disabled); both were
    refused here. Other numbers and non-zero periods still are."""
    for value, expected in ((1, True), (0, False), (1.0, True), ("1", True), ("false", False),
                            (True, True)):
        assert Body({"f": value}, ("f",)).flag("f") is expected, value
    bad: object
    for bad in (2, -1, 0.5, "yes", [], {}):
        with pytest.raises(BadRequest, match="f must be a boolean"):
            Body({"f": bad}, ("f",)).flag("f")
    for zero in (None, "", 0, "0", "0s", "0m", "0h", "0d", "0h0m0s", "00s", "0.0s", "0ms"):
        Body({"p": zero}, ("p",)).unsupported_period("p", feature="rotation")
    for period in ("1s", "0s1m", "24h", 3600, "1", "-0s", "0 s", "0x", "s", "0s\n", True):
        with pytest.raises(BadRequest, match="rotation is not supported by FerroHSM"):
            Body({"p": period}, ("p",)).unsupported_period("p", feature="rotation")


def test_key_types_map_both_ways_and_unknown_ones_are_refused() -> None:
    assert native_type(None) == ("aes-256-gcm", "encrypt")
    assert native_type("ecdsa-p384") == ("ec-p384", "sign")
    for vault_type in ("chacha20-poly1305", "ed25519", "rsa-3072", "hmac", "aes128-gcm96"):
        with pytest.raises(BadRequest, match="not supported by FerroHSM"):
            native_type(vault_type)


def test_key_info_has_vaults_shape() -> None:
    key = lc.new_key(key_id="01900000-0000-7000-8000-000000000001", name="pay", description="",
                     algorithm="ec-p256", usage="sign", tags=(), sealed=b"s", now=NOW, actor="a")
    info = key_info(key, lambda version: f"PEM{version}")
    assert info["type"] == "ecdsa-p256" and info["latest_version"] == 1
    assert info["keys"] == {"1": {"creation_time": "2026-01-02T03:04:05Z", "name": "P-256",
                                  "public_key": "PEM1"}}
    assert info["supports_signing"] and not info["supports_encryption"]
    assert not info["deletion_allowed"] and not info["exportable"] and not info["derived"]
    scheduled = lc.schedule_destroy(key, NOW, "a", timedelta(hours=1))
    shown = key_info(scheduled, lambda version: pytest.fail("a scheduled key may not verify"))
    assert shown["keys"]["1"] == {"creation_time": "2026-01-02T03:04:05Z", "name": "P-256"}


@pytest.mark.parametrize(("algorithm", "hashed", "padding", "expected"), [
    ("rsa-2048", None, None, "rsa-pss-sha256"),
    ("rsa-4096", "sha2-256", "pkcs1v15", "rsa-pkcs1v15-sha256"),
    ("ec-p256", None, "pss", "ecdsa-sha256"),  # Vault ignores signature_algorithm for ECDSA
    ("ec-p384", "sha2-384", None, "ecdsa-sha384"),
])
def test_sign_options_map_onto_schemes(algorithm: str, hashed: str | None, padding: str | None,
                                       expected: str) -> None:
    assert scheme(algorithm, hashed, padding) == expected


@pytest.mark.parametrize(("algorithm", "hashed", "padding"), [
    ("ec-p384", None, None), ("rsa-2048", "sha2-512", None), ("rsa-2048", None, "oaep"),
    ("ec-p256", "sha1", None), ("aes-256-gcm", None, None)])
def test_sign_options_ferrohsm_lacks_are_refused(algorithm: str, hashed: str | None,
                                                 padding: str | None) -> None:
    with pytest.raises(BadRequest):
        scheme(algorithm, hashed, padding)


def test_ciphertext_and_signature_text() -> None:
    assert to_vault("fhsm:v3:AAAA") == "vault:v3:AAAA"
    assert parse_token("vault:v3:AAAA") == parse_token("fhsm:v3:AAAA") == (3, b"\0\0\0")
    assert parse_signature(format_signature(7, b"\x30\x01")) == (7, b"\x30\x01")
    for bad in ("vault:v0:AAAA", "fhsm:v1:AAAA", "vault:v1:", "vault:v1:A"):
        with pytest.raises(BadRequest):
            parse_signature(bad)


def test_base64_skips_line_breaks_as_gos_std_encoding_does() -> None:
    """Vault decodes with Go's base64.StdEncoding, which skips every '\r' and '\n' (base64
    wrapped at 76 columns, a value read from a file): refused here before."""
    wrapped = base64.encodebytes(b"A" * 100).decode()
    assert "\n" in wrapped[:-1]
    for value, expected in ((wrapped, b"A" * 100), ("QQ==\r\n", b"A"), ("Q\nQ=\r=", b"A"),
                            ("\n", b"")):
        assert Body({"p": value}, ("p",)).base64("p") == expected, value
    for bad in ("QQ== ", "Q Q==", "QQ=\t=", "QQ=", "QQ===", "=QQ=", "QQ==\x00", "QQ\u00e9=",
                "QQ==\u2028"):
        with pytest.raises(BadRequest, match="p must be standard base64"):
            Body({"p": bad}, ("p",)).base64("p")


def test_ciphertexts_and_signatures_are_read_as_vault_reads_them() -> None:
    """Vault reads the version with strconv.Atoi ("v01" is 1) and the base64 with Go's
    StdEncoding (a ciphertext from a file ends in a newline); the engine stays strict."""
    for loose in ("vault:v1:AAAA\n", "vault:v01:AAAA", "vault:v001:AA\r\nAA\r\n"):
        assert canonical_ciphertext(loose) == "vault:v1:AAAA", loose
        assert parse_token(canonical_ciphertext(loose)) == (1, b"\0\0\0")
        with pytest.raises(BadRequest):  # the native API's strictness is unchanged
            parse_token(loose)
    assert canonical_ciphertext("fhsm:v0012:AAAA\n") == "fhsm:v12:AAAA"
    for bad in ("vault:v0:AAAA", "vault:v00:AAAA", "vault:v+1:AAAA", "vault:v-1:AAAA",
                "vault:v 1:AAAA", "vault:v:AAAA", "vault:v1:AA AA", "vault:v1:AAA=\t",
                "vault:v1:AB==", "vault:v1:AAAA=", "vault:v0012345678901:AAAA", "vault:v1:\n"):
        with pytest.raises(BadRequest):
            parse_token(canonical_ciphertext(bad))
    signature = format_signature(7, b"\x30\x01\x02")
    assert parse_signature(signature.replace("v7", "v007") + "\r\n") == (7, b"\x30\x01\x02")
    for bad in ("vault:v00:MAEC", "vault:v+7:MAEC", "vault:v7:MA EC", "vault:v7:\n",
                "vault:v7:MAE=\nC"):
        with pytest.raises(BadRequest):
            parse_signature(bad)


def test_errors_take_vaults_shape_and_statuses() -> None:
    def answer(exc: Exception) -> tuple[int, dict[str, object], dict[str, str]]:
        resp = envelope.error(exc)  # type: ignore[arg-type]
        return resp.status, json.loads(resp.body), dict(resp.headers)
    assert answer(NotFound("no such key"))[:2] == (404, {"errors": ["no such key"]})
    assert answer(Conflict("revoked"))[0] == 400
    status, body, _ = answer(ApprovalRequired("needs 2 approval(s)"))
    assert status == 400 and "dual control" in str(body)
    status, _, headers = answer(MethodNotAllowed("no", allow=("GET", "LIST")))
    assert status == 405 and headers["Allow"] == "GET, LIST"
    ok = json.loads(envelope.ok("rid", {"a": 1}).body)
    assert ok == {"request_id": "rid", "lease_id": "", "renewable": False, "lease_duration": 0,
                  "data": {"a": 1}, "wrap_info": None, "warnings": None, "auth": None}


def test_lookup_self_says_only_what_the_token_holds() -> None:
    """An unscoped token has no meta; one without jti, iat or exp has an empty accessor and no
    times, never made-up ones; ``id`` is never the token."""
    from ferrohsm.api.handlers.vaultauth import lookup_self_data
    from ferrohsm.domain.model import Principal, Role
    bare = lookup_self_data(Principal("cli", Role.AUDITOR), {}, 1000.0)
    assert (bare["id"], bare["accessor"], bare["meta"], bare["policies"]) == (
        "", "", None, ["auditor"])
    assert (bare["issue_time"], bare["expire_time"], bare["ttl"], bare["creation_ttl"]) == (
        None, None, 0, 0)
    late = lookup_self_data(Principal("x", Role.SERVICE, frozenset(), issued_at=0,
                                      expires_at=900), {}, 1000.0)
    assert (late["ttl"], late["meta"], late["issue_time"]) == (0, {"tags": ""},
                                                                "1970-01-01T00:00:00Z")
