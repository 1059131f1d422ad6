"""Cryptographic operation routes: encrypt, decrypt, sign, verify, wrap, unwrap."""

from __future__ import annotations

from ...auth.permissions import Action
from ...domain.errors import BadRequest
from ...domain.model import RequestContext
from ...service import KeyService
from ..http import Request
from ..router import Operation, Router
from .common import Field, Reply, b64, b64s, fields

# Field specs are built once here: constructing them per request costs more than the check.
ENCRYPT = {"plaintext": Field(str, True), "aad": Field(str)}
DECRYPT = {"ciphertext": Field(str, True), "aad": Field(str)}
SIGN = {"message": Field(str), "digest": Field(str), "algorithm": Field(str)}
VERIFY = {**SIGN, "signature": Field(str, True), "key_version": Field(int)}
WRAP = {"key_material": Field(str, True)}
UNWRAP = {"wrapped": Field(str, True)}
TAGS = ("crypto",)


def _message_or_digest(body: dict[str, object]) -> tuple[bytes, bool]:
    if ("message" in body) == ("digest" in body):
        raise BadRequest("give exactly one of message or digest")
    if "digest" in body:
        return b64(body["digest"], "digest") or b"", True  # type: ignore[arg-type]
    return b64(body["message"], "message") or b"", False  # type: ignore[arg-type]


def register(router: Router, service: KeyService) -> None:
    def encrypt(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        body = fields(req, ENCRYPT)
        plaintext = b64(body["plaintext"], "plaintext") or b""
        return 200, service.encrypt(ctx, p["key"], plaintext, b64(body.get("aad"), "aad"))

    def decrypt(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        body = fields(req, DECRYPT)
        out = service.decrypt(ctx, p["key"], body["ciphertext"], b64(body.get("aad"), "aad"))
        return 200, {"plaintext": b64s(out["plaintext"]), "key_version": out["key_version"]}

    def sign(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        body = fields(req, SIGN)
        data, prehashed = _message_or_digest(body)
        out = service.sign(ctx, p["key"], data, prehashed=prehashed, scheme=body.get("algorithm"))
        return 200, {**out, "signature": b64s(out["signature"])}

    def verify(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        body = fields(req, VERIFY)
        data, prehashed = _message_or_digest(body)
        signature = b64(body["signature"], "signature") or b""
        return 200, service.verify(ctx, p["key"], data, signature, prehashed=prehashed,
                                   scheme=body.get("algorithm"), version=body.get("key_version"))

    def wrap(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        body = fields(req, WRAP)
        return 200, service.wrap(ctx, p["key"], b64(body["key_material"], "key_material") or b"")

    def unwrap(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        body = fields(req, UNWRAP)
        out = service.unwrap(ctx, p["key"], body["wrapped"])
        return 200, {"key_material": b64s(out["key_material"]), "key_version": out["key_version"]}

    # Inline: they never block for long nor change state (Route.inline).
    router.add("POST", "/v1/keys/{key}/encrypt", encrypt, name="encrypt", inline=True,
               doc=Operation("AES-256-GCM encrypt", TAGS, Action.ENCRYPT,
                             request="EncryptRequest", response="EncryptResponse"))
    router.add("POST", "/v1/keys/{key}/decrypt", decrypt, name="decrypt", inline=True,
               doc=Operation("AES-256-GCM decrypt", TAGS, Action.DECRYPT,
                             request="DecryptRequest", response="DecryptResponse"))
    router.add("POST", "/v1/keys/{key}/sign", sign, name="sign", inline=True,
               doc=Operation("Sign a message or digest (DER)", TAGS, Action.SIGN,
                             request="SignRequest", response="SignResponse"))
    router.add("POST", "/v1/keys/{key}/verify", verify, name="verify", inline=True,
               doc=Operation("Verify a signature", TAGS, Action.VERIFY,
                             request="VerifyRequest", response="VerifyResponse"))
    router.add("POST", "/v1/keys/{key}/wrap", wrap, name="wrap", inline=True,
               doc=Operation("Wrap key material (RFC 5649)", TAGS, Action.WRAP,
                             request="WrapRequest", response="WrapResponse"))
    router.add("POST", "/v1/keys/{key}/unwrap", unwrap, name="unwrap", inline=True,
               doc=Operation("Unwrap key material", TAGS, Action.UNWRAP,
                             request="UnwrapRequest", response="UnwrapResponse"))
