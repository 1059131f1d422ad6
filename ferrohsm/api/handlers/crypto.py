"""Cryptographic operation routes: encrypt, decrypt, sign, verify, wrap, unwrap."""

from __future__ import annotations

from ...auth.permissions import Action
from ...domain.errors import BadRequest
from ...domain.model import RequestContext
from ...service import KeyService
from ..http import Request
from ..router import Operation, Router
from .common import MAX_VERSION, Field, Reply, b64, b64s, fields, int_field

# Field specs are built once here: constructing them per request costs more than the check.
ENCRYPT = {"plaintext": Field(str, True), "aad": Field(str)}
DECRYPT = {"ciphertext": Field(str, True), "aad": Field(str)}
SIGN = {"message": Field(str), "digest": Field(str), "algorithm": Field(str)}
VERIFY = {**SIGN, "signature": Field(str, True), "key_version": Field(int)}
WRAP = {"key_material": Field(str, True)}
UNWRAP = {"wrapped": Field(str, True)}
TAGS = ("crypto",)
# A well-formed token this key did not make (or altered, or with another AAD) is one opaque 400:
# the schema cannot tell it from a good one, so the document says it here.
OPAQUE = {op: ((400, f"bad_request: malformed input, or a token this key did not make, was "
                     f"altered or needs other AAD (one opaque {op} failure)", "Error"),)
          for op in ("decrypt", "unwrap")}


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
        version = int_field(body.get("key_version"), "key_version", 1, MAX_VERSION)
        return 200, service.verify(ctx, p["key"], data, signature, prehashed=prehashed,
                                   scheme=body.get("algorithm"), version=version)

    def wrap(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        body = fields(req, WRAP)
        return 200, service.wrap(ctx, p["key"], b64(body["key_material"], "key_material") or b"")

    def unwrap(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        body = fields(req, UNWRAP)
        out = service.unwrap(ctx, p["key"], body["wrapped"])
        return 200, {"key_material": b64s(out["key_material"]), "key_version": out["key_version"]}

    # Inline: they never block for long nor change state (Route.inline).
    # (operation, handler, OpenAPI summary, action, schema stem of its request and response)
    for op, handler, summary, action, schema in (
            ("encrypt", encrypt, "AES-256-GCM encrypt", Action.ENCRYPT, "Encrypt"),
            ("decrypt", decrypt, "AES-256-GCM decrypt", Action.DECRYPT, "Decrypt"),
            ("sign", sign, "Sign a message or digest (DER)", Action.SIGN, "Sign"),
            ("verify", verify, "Verify a signature", Action.VERIFY, "Verify"),
            ("wrap", wrap, "Wrap key material (RFC 5649)", Action.WRAP, "Wrap"),
            ("unwrap", unwrap, "Unwrap key material", Action.UNWRAP, "Unwrap")):
        router.add("POST", f"/v1/keys/{{key}}/{op}", handler, name=op, inline=True,
                   doc=Operation(summary, TAGS, action, request=f"{schema}Request",
                                 response=f"{schema}Response", errors=(409, 410),
                                 extra=OPAQUE.get(op, ())))
