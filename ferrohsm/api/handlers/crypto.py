"""Cryptographic operation routes: encrypt, decrypt, sign, verify, wrap, unwrap, data-key.

encrypt, decrypt, sign and verify also take a batch, ``{"batch": [item, ...]}``, each item the
body of a single request; the answer is ``{"results": [...]}`` in order, each the item's result
or its own error object (api/http.py ``error_object``). Every item goes through the service's
per-item path (service/batch.py), so it is rate-limited, authorized, approved and audited as a
request of its own would be; one bad item never fails the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...auth.permissions import Action
from ...domain.errors import BadRequest, FerroError, NotFound
from ...domain.model import RequestContext, is_key_ref
from ...service import KeyService
from ...service.batch import CryptoBatch, CryptoItems
from ..http import Request, error_object
from ..router import Operation, Router
from .common import (
    MAX_VERSION,
    Field,
    Handler,
    Reply,
    b64,
    b64s,
    check_fields,
    fields,
    int_field,
    json_body,
)

# Field specs are built once here: constructing them per request costs more than the check.
ENCRYPT = {"plaintext": Field(str, True), "aad": Field(str)}
DECRYPT = {"ciphertext": Field(str, True), "aad": Field(str)}
SIGN = {"message": Field(str), "digest": Field(str), "algorithm": Field(str)}
VERIFY = {**SIGN, "signature": Field(str, True), "key_version": Field(int)}
WRAP = {"key_material": Field(str, True)}
UNWRAP = {"wrapped": Field(str, True)}
DATA_KEY = {"bits": Field(int), "include_plaintext": Field(bool), "aad": Field(str)}
TAGS = ("crypto",)
# A well-formed token this key did not make (or altered, or with another AAD) is one opaque 400:
# the schema cannot tell it from a good one, so the document says it here.
OPAQUE = {op: ((400, f"bad_request: malformed input, or a token this key did not make, was "
                     f"altered or needs other AAD (one opaque {op} failure)", "Error"),)
          for op in ("decrypt", "unwrap")}
# A sign or verify body that may be a batch runs on the worker pool (Route.offload), so a
# thousand RSA signatures never hold the event loop. Decided before the body is parsed, so by
# bytes, and erring towards the pool: any body that holds "batch" anywhere (a member after
# another, or by chance inside base64) or a backslash (a member name spelled with escapes,
# "\u0062atch") goes there; a plain single call never holds either. Encrypt and decrypt batches
# stay on the loop: AES-GCM costs ~10 µs an item, so even 1,000 items hold it ~10 ms, and inline
# they run ~25 % faster (bench/bench_batch.py: no hand-over, one group commit shared with the
# turn's other requests).
Parse = Callable[[Any], tuple[Any, ...]]
Run = Callable[[CryptoBatch, str, tuple[Any, ...]], dict[str, Any]]


def is_batch(req: Request) -> bool:
    body = req.body
    return b"batch" in body or b"\\" in body


def _message_or_digest(body: dict[str, object]) -> tuple[bytes, bool]:
    if ("message" in body) == ("digest" in body):
        raise BadRequest("give exactly one of message or digest")
    if "digest" in body:
        return b64(body["digest"], "digest") or b"", True  # type: ignore[arg-type]
    return b64(body["message"], "message") or b"", False  # type: ignore[arg-type]


def batch_items(body: dict[str, Any]) -> list[Any] | None:
    """The items of a batch body, None for a single request (no ``batch`` member, or null)."""
    items = body.get("batch")
    if items is None:
        body.pop("batch", None)  # a member sent as null is absent (docs/api.md Conventions)
        return None
    if len(body) != 1:
        raise BadRequest("a batch body holds only the member batch (each item is the body of "
                         "a single request)")
    if not isinstance(items, list):
        raise BadRequest("field batch must be an array of items")
    return items


# ---- one item of each operation: parse (a 400 of its own), then run through the batch ----

def _parse_encrypt(item: Any) -> tuple[Any, ...]:
    body = check_fields(item, ENCRYPT)
    return b64(body["plaintext"], "plaintext") or b"", b64(body.get("aad"), "aad")


def _run_encrypt(batch: CryptoBatch, ref: str, args: tuple[Any, ...]) -> dict[str, Any]:
    return batch.encrypt(ref, args[0], args[1])


def _parse_decrypt(item: Any) -> tuple[Any, ...]:
    body = check_fields(item, DECRYPT)
    return body["ciphertext"], b64(body.get("aad"), "aad")


def _run_decrypt(batch: CryptoBatch, ref: str, args: tuple[Any, ...]) -> dict[str, Any]:
    out = batch.decrypt(ref, args[0], args[1])
    return {"plaintext": b64s(out["plaintext"]), "key_version": out["key_version"]}


def _parse_sign(item: Any) -> tuple[Any, ...]:
    body = check_fields(item, SIGN)
    data, prehashed = _message_or_digest(body)
    return data, prehashed, body.get("algorithm")


def _run_sign(batch: CryptoBatch, ref: str, args: tuple[Any, ...]) -> dict[str, Any]:
    out = batch.sign(ref, args[0], prehashed=args[1], scheme=args[2])
    return {**out, "signature": b64s(out["signature"])}


def _parse_verify(item: Any) -> tuple[Any, ...]:
    body = check_fields(item, VERIFY)
    data, prehashed = _message_or_digest(body)
    signature = b64(body["signature"], "signature") or b""
    version = int_field(body.get("key_version"), "key_version", 1, MAX_VERSION)
    return data, signature, prehashed, body.get("algorithm"), version


def _run_verify(batch: CryptoBatch, ref: str, args: tuple[Any, ...]) -> dict[str, Any]:
    return batch.verify(ref, args[0], args[1], prehashed=args[2], scheme=args[3],
                        version=args[4])


BATCHED: dict[Action, tuple[Parse, Run]] = {
    Action.ENCRYPT: (_parse_encrypt, _run_encrypt),
    Action.DECRYPT: (_parse_decrypt, _run_decrypt),
    Action.SIGN: (_parse_sign, _run_sign),
    Action.VERIFY: (_parse_verify, _run_verify),
}


def run_batch(items: CryptoItems, ctx: RequestContext, action: Action, ref: str,
              batch: list[Any]) -> Reply:
    """200 and every item's result or error, in order; the records are written (durable, or
    queued on the request's tickets) before this returns."""
    parse, run = BATCHED[action]
    results: list[dict[str, Any]] = []
    with items.batch(ctx, action, len(batch)) as open_batch:
        for item in batch:
            try:
                args = parse(item)
            except FerroError as exc:
                results.append(error_object(open_batch.refuse(action, ref, exc)))
                continue
            try:
                results.append(run(open_batch, ref, args))
            except FerroError as exc:
                results.append(error_object(exc))
    return 200, {"results": results}


Single = Callable[[RequestContext, dict[str, Any], str], Reply]


def one_or_batch(items: CryptoItems, action: Action, single: Single) -> Handler:
    """The route handler of an operation that takes one item or a batch of them."""
    def handler(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        raw = json_body(req)
        batch = batch_items(raw)
        if batch is not None:
            if not is_key_ref(p["key"]):  # no item could run: say so for the whole request,
                raise NotFound("no such key")  # as a single one is told, not item by item
            return run_batch(items, ctx, action, p["key"], batch)
        return single(ctx, raw, p["key"])
    return handler


def register(router: Router, service: KeyService, items: CryptoItems | None = None) -> None:
    batches = items or CryptoItems(service)

    def encrypt_one(ctx: RequestContext, raw: dict[str, Any], ref: str) -> Reply:
        body = check_fields(raw, ENCRYPT)
        plaintext = b64(body["plaintext"], "plaintext") or b""
        return 200, service.encrypt(ctx, ref, plaintext, b64(body.get("aad"), "aad"))

    def decrypt_one(ctx: RequestContext, raw: dict[str, Any], ref: str) -> Reply:
        body = check_fields(raw, DECRYPT)
        out = service.decrypt(ctx, ref, body["ciphertext"], b64(body.get("aad"), "aad"))
        return 200, {"plaintext": b64s(out["plaintext"]), "key_version": out["key_version"]}

    def sign_one(ctx: RequestContext, raw: dict[str, Any], ref: str) -> Reply:
        body = check_fields(raw, SIGN)
        data, prehashed = _message_or_digest(body)
        out = service.sign(ctx, ref, data, prehashed=prehashed, scheme=body.get("algorithm"))
        return 200, {**out, "signature": b64s(out["signature"])}

    def verify_one(ctx: RequestContext, raw: dict[str, Any], ref: str) -> Reply:
        body = check_fields(raw, VERIFY)
        data, prehashed = _message_or_digest(body)
        signature = b64(body["signature"], "signature") or b""
        version = int_field(body.get("key_version"), "key_version", 1, MAX_VERSION)
        return 200, service.verify(ctx, ref, data, signature, prehashed=prehashed,
                                   scheme=body.get("algorithm"), version=version)

    encrypt = one_or_batch(batches, Action.ENCRYPT, encrypt_one)
    decrypt = one_or_batch(batches, Action.DECRYPT, decrypt_one)
    sign = one_or_batch(batches, Action.SIGN, sign_one)
    verify = one_or_batch(batches, Action.VERIFY, verify_one)

    def wrap(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        body = fields(req, WRAP)
        return 200, service.wrap(ctx, p["key"], b64(body["key_material"], "key_material") or b"")

    def unwrap(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        body = fields(req, UNWRAP)
        out = service.unwrap(ctx, p["key"], body["wrapped"])
        return 200, {"key_material": b64s(out["key_material"]), "key_version": out["key_version"]}

    def data_key(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        body = fields(req, DATA_KEY)
        include = body.get("include_plaintext", True)
        out = service.data_key(ctx, p["key"], body.get("bits", 256), include_plaintext=include,
                               aad=b64(body.get("aad"), "aad"))
        if "plaintext" in out:
            out["plaintext"] = b64s(out["plaintext"])
        return 200, out

    # Inline: they never block for long nor change state (Route.inline); a sign or verify
    # batch is offloaded (is_batch).
    # (operation, handler, OpenAPI summary, action, schema stem of its request and response,
    # whether it takes a batch)
    for op, handler, summary, action, schema, batched in (
            ("encrypt", encrypt, "AES-256-GCM encrypt (one item or a batch)", Action.ENCRYPT,
             "Encrypt", True),
            ("decrypt", decrypt, "AES-256-GCM decrypt (one item or a batch)", Action.DECRYPT,
             "Decrypt", True),
            ("sign", sign, "Sign a message or digest, DER (one item or a batch)", Action.SIGN,
             "Sign", True),
            ("verify", verify, "Verify a signature (one item or a batch)", Action.VERIFY,
             "Verify", True),
            ("wrap", wrap, "Wrap key material (RFC 5649)", Action.WRAP, "Wrap", False),
            ("unwrap", unwrap, "Unwrap key material", Action.UNWRAP, "Unwrap", False),
            ("data-key", data_key, "Generate a data key for envelope encryption",
             Action.ENCRYPT, "DataKey", False)):
        stem = f"{schema}Call" if batched else f"{schema}Request"
        answer = f"{schema}Answer" if batched else f"{schema}Response"
        router.add("POST", f"/v1/keys/{{key}}/{op}", handler,
                   name="dataKey" if op == "data-key" else op, inline=True,
                   offload=is_batch if action in (Action.SIGN, Action.VERIFY) else None,
                   doc=Operation(summary, TAGS, action, request=stem, response=answer,
                                 errors=(409, 410), extra=OPAQUE.get(op, ())))
