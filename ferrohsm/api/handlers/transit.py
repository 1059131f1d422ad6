"""Vault transit routes under /v1/transit/: Vault's requests, FerroHSM's service calls.

Every operation is the native one underneath (``KeyService``: authorization, tag scoping, dual
control, lifecycle and audit), so the Vault surface gives no extra power. A single encrypt,
decrypt, rewrap, sign or verify is KeyService's single call (one record each); a
``batch_input`` runs through THE per-item path of the native batches (service/batch.py
``CryptoItems``): each item is authorized, approved and audited as a native batch item is (one
record per group of like items, naming key, version, outcome and the items' positions), and a
batch of n items spends n tokens of the caller's rate limit, all of them or the request is
refused 429 before any item runs. An item's own bad input, failed decryption or refused key
state is that item's ``error``; anything that would refuse every item alike (no such key,
permission, rate limit, a parked approval, audit unavailable, any 5xx) fails the whole request,
until an item has acted: from then on only a 5xx does (the results already recorded, and an
approval an earlier item spent, are not thrown away for a later item's refusal).
As in Vault, an encrypt, decrypt or rewrap batch with a failed item answers 400 with every item's
result, or ``partial_failure_response_code`` when some items succeeded; a sign or verify batch
answers 200 whatever its items' errors (Vault's sign and verify never apply that rule, and hvac
would raise on a 400 and lose the signatures made). ``datakey`` is the native data key
(``KeyService.data_key``).

Writes answer POST and PUT alike (Vault's Go client writes with PUT), listings GET ``?list=true``
and the LIST method. Vault features FerroHSM lacks answer 400 ``... not supported by FerroHSM``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...auth.permissions import Action
from ...control.policy import ALLOWED
from ...domain.errors import (
    BadRequest,
    FerroError,
    MethodNotAllowed,
    NameTaken,
    NotFound,
    Recorded,
    recorded,
)
from ...domain.model import Key, KeyFilter, KeyState, RequestContext
from ...service import KeyService
from ...service.batch import CryptoBatch, CryptoItems, Items
from ...service.guard import MISSING_KEY
from ...service.randomness import MAX_RANDOM_BYTES, random_bytes
from ..http import Request, Response, json_response
from ..router import Router
from ..transit.body import NOT_SUPPORTED, Body
from ..transit.envelope import ok, vault_message
from ..transit.keyinfo import key_info, native_type, reference
from ..transit.text import (
    canonical_ciphertext,
    format_signature,
    parse_signature,
    scheme,
    to_vault,
)
from .common import MAX_VERSION, b64s, json_body

P = "/v1/transit"
ITEM_STATUSES = frozenset({400, 409, 410, 413})  # an item's own failure; others fail the batch
# Vault's batchRequestResponse (400, or partial_failure_response_code) is encrypt/decrypt/rewrap's
FAILED_ITEMS_FAIL = frozenset({Action.ENCRYPT, Action.DECRYPT})
CHECKED_HERE = FAILED_ITEMS_FAIL  # sign and verify check permission before their options
DATA_KEY_BITS = (128, 256, 512)
RANDOM_SOURCES = ("platform",)
One = Callable[[Items, Body], dict[str, Any]]  # one item: parse it, then one call
Handler = Callable[[RequestContext, Request, dict[str, str]], Response]
# Vault's 400 for a key that does not exist, in its words per endpoint (only reading a key, and
# encrypt, which Vault would create the key on and FerroHSM does not, stay 404)
ENCRYPTION_KEY_NOT_FOUND = "encryption key not found"
SIGNING_KEY_NOT_FOUND = "signing key not found"
VERIFICATION_KEY_NOT_FOUND = "signature verification key not found"
KEY_NOT_FOUND = "key not found"

CREATE = ("type", "derived", "convergent_encryption", "exportable", "allow_plaintext_backup",
          "auto_rotate_period", "key_size", "managed_key_name", "managed_key_id", "context")
ENCRYPT_ITEM = ("plaintext", "associated_data", "context", "nonce", "key_version", "reference")
ENCRYPT = (*ENCRYPT_ITEM, "batch_input", "type", "convergent_encryption",
           "partial_failure_response_code")
DECRYPT_ITEM = ("ciphertext", "associated_data", "context", "nonce", "reference")
DECRYPT = (*DECRYPT_ITEM, "batch_input", "partial_failure_response_code")
REWRAP_ITEM = ("ciphertext", "associated_data", "context", "nonce", "key_version", "reference")
REWRAP = (*REWRAP_ITEM, "batch_input", "partial_failure_response_code")
DATAKEY = ("bits", "context", "nonce", "key_version")
SIGN_OPTIONS = ("hash_algorithm", "algorithm", "prehashed", "signature_algorithm",
                "marshaling_algorithm", "salt_length", "key_version", "name", "batch_input")
SIGN_ITEM = ("input", "context", "reference")
VERIFY_ITEM = ("input", "signature", "hmac", "context", "reference")
RANDOM = ("bytes", "format", "source")

# endpoint (method, path under /v1/transit) -> the feature FerroHSM does not have
UNSUPPORTED: tuple[tuple[str, str, str], ...] = (
    ("DELETE", "/keys/{name}", "deleting keys through the transit API (use the native destroy)"),
    ("POST", "/keys/{name}/config", "key configuration"),
    ("POST", "/keys/{name}/trim", "trimming key versions"),
    ("POST", "/keys/{name}/import", "importing keys"),
    ("POST", "/keys/{name}/import_version", "importing keys"),
    ("GET", "/wrapping_key", "importing keys"),
    ("GET", "/export/{type}/{name}", "exporting keys"),
    ("GET", "/export/{type}/{name}/{version}", "exporting keys"),
    ("GET", "/backup/{name}", "key backup"),
    ("POST", "/restore", "key restore"),
    ("POST", "/restore/{name}", "key restore"),
    ("GET", "/cache-config", "cache configuration"),
    ("POST", "/cache-config", "cache configuration"),
    ("GET", "/config/keys", "transit key configuration"),
    ("POST", "/config/keys", "transit key configuration"),
    ("POST", "/hash", "the hash endpoint"),
    ("POST", "/hash/{algorithm}", "the hash endpoint"),
    ("POST", "/hmac/{name}", "HMAC"),
    ("POST", "/hmac/{name}/{algorithm}", "HMAC"),
)


class Transit:
    """The handlers, over one KeyService and the batch path of its cryptographic items."""

    def __init__(self, service: KeyService, items: CryptoItems) -> None:
        self.service = service
        self.items = items

    # ---- keys ----

    def create(self, ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        body = Body(_json(req), CREATE)
        body.unsupported("derived", "context", feature="key derivation (derived keys)")
        body.unsupported("convergent_encryption", feature="convergent encryption")
        body.unsupported("exportable", "allow_plaintext_backup", feature="exportable keys")
        body.unsupported_period("auto_rotate_period",
                                feature="auto_rotate_period (use [policy] rotation_days)")
        body.unsupported("key_size", feature="HMAC keys")
        body.unsupported("managed_key_name", "managed_key_id", feature="managed keys")
        algorithm, usage = native_type(body.text("type"))
        warnings = body.warnings()
        try:
            key = self.service.create_key(ctx, algorithm=algorithm, usage=usage, name=p["name"],
                                          description="created through the Vault transit API")
        except NameTaken:  # Vault answers an existing name with its key and a warning
            key = self.service.get_key(ctx, p["name"])
            if key.state is not KeyState.ACTIVE:  # "already existed" would mean "use it"
                raise BadRequest(f"key {reference(key)} already exists and is "
                                 f"{key.state.value}: its name cannot be used for a new key"
                                 ) from None
            warnings.append(f"key {reference(key)} already existed")
        return ok(req.request_id, self.info(ctx, key), warnings)

    def read(self, ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        return ok(req.request_id, self.info(ctx, self.service.get_key(ctx, p["name"])))

    def rotate(self, ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        warnings = Body(_json(req), ()).warnings()
        return ok(req.request_id, self.info(ctx, self.service.rotate(ctx, p["name"])), warnings)

    def list_keys(self, ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        listed = req.query.get("list") or [""]
        if req.method != "LIST" and listed[-1] not in ("true", "1"):
            raise MethodNotAllowed("reading keys/ lists keys: add ?list=true or use LIST",
                                   allow=("GET", "HEAD", "LIST"))
        names: list[str] = []
        token: str | None = None
        while True:
            page, _ = self.service.list_keys(ctx, KeyFilter(), 1000, token)
            names.extend(reference(k) for k in page.keys)
            token = page.next_page_token
            if token is None:
                break
        if not names:  # Vault answers an empty listing 404 with no error text
            return _empty_404()
        return ok(req.request_id, {"keys": sorted(names)})

    def info(self, ctx: RequestContext, key: Key) -> dict[str, Any]:
        def public_pem(version: int) -> str:
            return str(self.service.public_key(ctx, key.id, version)["pem"])
        return key_info(key, public_pem if self._public_shown(ctx, key) else None)

    def _public_shown(self, ctx: RequestContext, key: Key) -> bool:
        """Whether the key's info carries its public keys: not for a key whose public key
        needs an approval (or that the caller may not read): reading its info parked an
        approval, and the approval then given was refused as "key.read never needs one"
        (an outside tester). Vault shows a key's info whatever its policies."""
        if key.usage != "sign" or ctx.approval_id is not None:
            return False
        try:
            _, decision = self.service.guard.admit(ctx, Action.KEY_PUBLIC, key.id)
        except FerroError:
            return False
        return decision is ALLOWED

    # ---- encryption ----

    def encrypt(self, ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        body, name = Body(_json(req), ENCRYPT), p["name"]
        body.unsupported("convergent_encryption", feature="convergent encryption")
        if body.text("type") not in (None, "", "aes256-gcm96"):
            raise BadRequest(f"creating keys on encrypt (upsert) is {NOT_SUPPORTED}")

        def one(calls: Items, item: Body) -> dict[str, Any]:
            _no_derivation(item)
            plaintext = item.base64("plaintext")
            if plaintext is None:
                raise BadRequest("missing plaintext to encrypt")
            out = calls.encrypt(name, plaintext, item.base64("associated_data"),
                                version=_version(item))
            return {"ciphertext": to_vault(out["ciphertext"]), "key_version": out["key_version"]}
        return self.run(ctx, req, body, Action.ENCRYPT, name, one, ENCRYPT_ITEM)

    def decrypt(self, ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        body, name = Body(_json(req), DECRYPT), p["name"]

        def one(calls: Items, item: Body) -> dict[str, Any]:
            _no_derivation(item)
            out = calls.decrypt(name, _ciphertext(item), item.base64("associated_data"))
            return {"plaintext": b64s(out["plaintext"])}
        return self.run(ctx, req, body, Action.DECRYPT, name, one, DECRYPT_ITEM)

    def rewrap(self, ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        """Decrypt and encrypt again under the primary version (recorded as a decrypt and an
        encrypt; the plaintext never leaves the server)."""
        body, name = Body(_json(req), REWRAP), p["name"]

        def one(calls: Items, item: Body) -> dict[str, Any]:
            _no_derivation(item)
            out = calls.rewrap(name, _ciphertext(item), item.base64("associated_data"),
                               version=_version(item))
            return {"ciphertext": to_vault(out["ciphertext"]), "key_version": out["key_version"]}
        return self.run(ctx, req, body, Action.DECRYPT, name, one, REWRAP_ITEM)

    def datakey(self, ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        """The native data key (audited as one, "generated a 256-bit data key"), in Vault's
        sizes; ``plaintext`` also returns the key, ``wrapped`` only its ciphertext."""
        if p["kind"] not in ("plaintext", "wrapped"):
            raise BadRequest("datakey type must be plaintext or wrapped")
        body, name = Body(_json(req), DATAKEY), p["name"]
        _no_derivation(body)
        out = self.service.data_key(ctx, name, body.one_of("bits", DATA_KEY_BITS) or 256,
                                    include_plaintext=p["kind"] == "plaintext",
                                    version=_version(body), sizes=DATA_KEY_BITS)
        data = {"ciphertext": to_vault(out["ciphertext"]), "key_version": out["key_version"]}
        if "plaintext" in out:
            data["plaintext"] = b64s(out["plaintext"])
        return ok(req.request_id, data, body.warnings())

    # ---- signatures ----

    def sign(self, ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        body, name = Body(_json(req), (*SIGN_OPTIONS, *SIGN_ITEM)), p["name"]
        key = self.authorized(ctx, Action.SIGN, name)
        chosen, prehashed = _sign_options(body, p.get("hash"), key)
        wanted = body.integer("key_version", 0, MAX_VERSION)
        if wanted and wanted != key.primary_version:
            raise BadRequest(f"signing with a version other than the primary "
                             f"({key.primary_version}) is {NOT_SUPPORTED}")

        def one(calls: Items, item: Body) -> dict[str, Any]:
            _no_derivation(item)
            data = item.base64("input")
            if data is None:
                raise BadRequest("missing input to sign")
            out = calls.sign(name, data, prehashed=prehashed, scheme=chosen)
            version = out["key_version"]
            return {"signature": format_signature(version, out["signature"]),
                    "key_version": version}
        return self.run(ctx, req, body, Action.SIGN, name, one, SIGN_ITEM)

    def verify(self, ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        body, name = Body(_json(req), (*SIGN_OPTIONS, *VERIFY_ITEM)), p["name"]
        key = self.authorized(ctx, Action.VERIFY, name)
        chosen, prehashed = _sign_options(body, p.get("hash"), key, verifying=True)

        def one(calls: Items, item: Body) -> dict[str, Any]:
            _no_derivation(item)
            item.unsupported("hmac", feature="HMAC")
            data, signature = item.base64("input"), item.text("signature")
            if data is None or not signature:
                raise BadRequest("missing input or signature to verify")
            version, der = parse_signature(signature)
            out = calls.verify(name, data, der, prehashed=prehashed, scheme=chosen,
                               version=version)
            return {"valid": bool(out["valid"])}
        return self.run(ctx, req, body, Action.VERIFY, name, one, VERIFY_ITEM)

    def authorized(self, ctx: RequestContext, action: Action, name: str) -> Key:
        """The key whose algorithm decides what Vault's sign options mean, once the caller may
        ``action`` it (as Vault checks its ACL before any parameter): a refusal is recorded as
        that action's, and a key the caller may use is not also recorded as read."""
        return self.service.guard.on_key(ctx, action, name, lambda key, _: key)

    # ---- random ----

    def random(self, ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        body = Body(_json(req), RANDOM)
        source, count = p.get("source"), p.get("bytes")
        if source is not None and source.lstrip("-+").isdigit() and count is None:
            source, count = None, source  # random/32: Vault reads a number as the size
        source = source or body.text("source") or "platform"
        if source not in RANDOM_SOURCES:
            raise BadRequest(f"random source {source[:40]!a} is {NOT_SUPPORTED} "
                             f"(supported: platform)")
        size = (Body({"bytes": count}, ("bytes",)).integer("bytes", 1, MAX_RANDOM_BYTES)
                if count is not None else body.integer("bytes", 1, MAX_RANDOM_BYTES)) or 32
        encoding = body.only("format", ("base64", "hex"), "base64")
        data = random_bytes(self.service.guard, ctx, size)
        text = b64s(data) if encoding == "base64" else data.hex()
        return ok(req.request_id, {"random_bytes": text}, body.warnings())

    # ---- batches ----

    def run(self, ctx: RequestContext, req: Request, body: Body, action: Action, name: str,
            one: One, item_fields: tuple[str, ...]) -> Response:
        """A single request (KeyService's single calls: any refusal fails it), or each item
        of ``batch_input`` in order (see the module docstring)."""
        raw = body.raw("batch_input")
        if raw is None:
            return ok(req.request_id, one(self.items.single(ctx), body), body.warnings())
        if action in CHECKED_HERE:  # as Vault checks its ACL before any item's parameters
            self.authorized(ctx, action, name)
        batch = _items(raw)
        # checked before any item runs: a bad value found afterwards would throw away the
        # results of items that acted (an approval spent, a decryption recorded)
        failing = action in FAILED_ITEMS_FAIL
        partial = body.integer("partial_failure_response_code", 200, 599) if failing else None
        results: list[dict[str, Any]] = []
        acted = False
        with self.items.batch(ctx, action, len(batch), pay_all=True) as items:
            for item in batch:
                result = _item(items, action, name, one, item, item_fields, acted)
                acted = acted or "error" not in result
                if isinstance(item, dict) and isinstance(item.get("reference"), str):
                    result["reference"] = item["reference"]
                results.append(result)
        failed = failing and any("error" in r for r in results)
        status = 200 if not failed else partial if partial is not None and acted else 400
        return ok(req.request_id, {"batch_results": results}, body.warnings(), status)


def _item(batch: CryptoBatch, action: Action, name: str, one: One, raw: object,
          item_fields: tuple[str, ...], acted: bool) -> dict[str, Any]:
    """One ``batch_input`` item's result, or its own ``error``. Before any item has acted, a
    refusal that would refuse every item alike is raised (the request fails whole); once one
    has, every refusal but a 5xx is the item's own (an approval that covers an earlier item
    and not this one): failing the request then would lose results already recorded. Input
    the item's call never saw (it failed to parse) is recorded here, in the item's place."""
    try:
        return one(batch, Body(raw, item_fields, "each batch_input item"))
    except FerroError as exc:
        refused = exc if isinstance(exc, Recorded) else batch.refuse(action, name, exc)
        if refused.status not in ITEM_STATUSES and not (acted and refused.status < 500):
            raise refused from None
        return {"error": vault_message(refused)}


def _json(req: Request) -> dict[str, Any]:
    """The body as Vault reads it: JSON whatever the Content-Type (api/parse.py
    UNTYPED_JSON_PREFIX); a real form body says that forms are not read here."""
    try:
        return json_body(req)
    except BadRequest:
        declared = (req.headers.get("content-type") or "").partition(";")[0].strip().lower()
        # `curl --data '{…}'` (as Vault's docs write it) declares a form: a body that is
        # JSON nonetheless gets its own mistake named (a trailing comma, a duplicate member)
        if declared == "application/x-www-form-urlencoded" \
                and req.body.lstrip()[:1] not in (b"{", b"["):
            raise BadRequest("form-encoded bodies are not read by FerroHSM: send the "
                             "parameters as a JSON object") from None
        raise


def _version(item: Body) -> int | None:
    """The ``key_version`` a caller asks to encrypt with (the service refuses all but the
    primary)."""
    return item.integer("key_version", 0, MAX_VERSION)


def _no_derivation(item: Body) -> None:
    item.unsupported("context", feature="key derivation (context)")
    item.unsupported("nonce", feature="a caller-chosen nonce (convergent encryption)")


def _ciphertext(item: Body) -> str:
    text = item.text("ciphertext")
    if not text:
        raise BadRequest("missing ciphertext to decrypt")
    return canonical_ciphertext(text)


def _items(batch: object) -> list[Any]:
    """The items (how many a batch may hold is [crypto].max_batch_items, as natively)."""
    if not isinstance(batch, list) or not batch:
        raise BadRequest("batch_input must be a non-empty list of objects")
    for n, item in enumerate(batch):  # Vault refuses the request; dropping it lost the match
        if isinstance(item, dict) and "reference" in item \
                and not isinstance(item["reference"], str):
            raise BadRequest(f"'[{n}].reference' expected type 'string'")
    return batch


def _sign_options(body: Body, path_hash: str | None, key: Key, *, verifying: bool = False
                  ) -> tuple[str, bool]:
    """(FerroHSM scheme, prehashed) for Vault's sign/verify options on ``key``. A PSS
    signature of any salt length verifies (crypto/ops.py), so a verify takes any
    ``salt_length``; a signature is made with the hash length's."""
    body.only("marshaling_algorithm", ("asn1",), "asn1")
    hashed = path_hash or body.text("hash_algorithm") or body.text("algorithm")
    chosen = scheme(key.algorithm, hashed, body.text("signature_algorithm"))
    salt = body.raw("salt_length")
    if not verifying and salt not in (None, "", "auto", "hash") and str(salt) != "32":
        raise BadRequest(f"salt_length {str(salt)[:20]!a} is {NOT_SUPPORTED} "
                         f"(FerroHSM's PSS salt is the hash length: auto, hash or 32)")
    return chosen, body.flag("prehashed")


def _missing_key(handler: Handler, message: str) -> Handler:
    """``handler`` answering a missing key as Vault does there: 400 ``message``, not 404 (hvac
    raises InvalidRequest, not InvalidPath). A key outside the token's tags is refused with the
    same "no such key" as a missing one (service/guard.py OutOfScope), so it gets the same
    answer here and a scoped token still cannot tell the two apart. Already recorded by the
    service as the native refusal: the record keeps saying what happened and why."""
    def wrapped(ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        try:
            return handler(ctx, req, p)
        except NotFound as exc:
            if exc.message != MISSING_KEY:
                raise
            vault = BadRequest(message)
            raise (recorded(vault) if isinstance(exc, Recorded) else vault) from None
    return wrapped


def _permission_first(t: Transit, handler: Handler, action: Action) -> Handler:
    """``handler`` answering a caller who may not ``action`` the key 403 (recorded as that
    action's refusal) whatever is wrong with its parameters, as Vault checks its ACL before
    them: an Auditor's encrypt of bad base64 was a 400 recorded with no key, its well-formed
    one a 403 (an outside tester). Checked only when the parameters failed: the answer to a
    well-formed request is its call's own, and costs no second lookup."""
    def wrapped(ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        try:
            return handler(ctx, req, p)
        except BadRequest as exc:
            if isinstance(exc, Recorded) or "name" not in p:
                raise
            t.authorized(ctx, action, p["name"])
            raise
    return wrapped


def _empty_404() -> Response:
    return json_response(404, {"errors": []})


def _unsupported(feature: str) -> Callable[[RequestContext, Request, dict[str, str]], Response]:
    def handler(ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        raise BadRequest(f"{feature} is {NOT_SUPPORTED}")
    return handler


def register(router: Router, service: KeyService, items: CryptoItems | None = None) -> None:
    """The transit routes; undocumented in OpenAPI (README.md documents them)."""
    t = Transit(service, items or CryptoItems(service))
    rotate = _missing_key(t.rotate, KEY_NOT_FOUND)
    encrypt = _permission_first(t, t.encrypt, Action.ENCRYPT)
    decrypt = _missing_key(_permission_first(t, t.decrypt, Action.DECRYPT),
                           ENCRYPTION_KEY_NOT_FOUND)
    rewrap = _missing_key(_permission_first(t, t.rewrap, Action.DECRYPT),
                          ENCRYPTION_KEY_NOT_FOUND)
    datakey = _missing_key(_permission_first(t, t.datakey, Action.ENCRYPT),
                           ENCRYPTION_KEY_NOT_FOUND)
    sign = _missing_key(t.sign, SIGNING_KEY_NOT_FOUND)
    verify = _missing_key(t.verify, VERIFICATION_KEY_NOT_FOUND)
    writes: tuple[tuple[str, Any, bool], ...] = (
        ("/keys/{name}", t.create, False), ("/keys/{name}/rotate", rotate, False),
        ("/encrypt/{name}", encrypt, True), ("/decrypt/{name}", decrypt, True),
        ("/rewrap/{name}", rewrap, True), ("/datakey/{kind}/{name}", datakey, True),
        # sign/verify run on the pool: a batch of RSA-4096 signatures would hold the loop
        ("/sign/{name}", sign, False), ("/sign/{name}/{hash}", sign, False),
        ("/verify/{name}", verify, False), ("/verify/{name}/{hash}", verify, False),
        ("/random", t.random, True), ("/random/{source}", t.random, True),
        ("/random/{source}/{bytes}", t.random, True))
    for path, handler, inline in writes:
        for method in ("POST", "PUT"):
            router.add(method, P + path, handler, inline=inline)
    router.add("GET", P + "/keys/{name}", t.read)
    router.add("GET", P + "/keys", t.list_keys)  # "keys/" too: api/parse.py VAULT_LISTING
    router.add("LIST", P + "/keys", t.list_keys)
    for method, path, feature in UNSUPPORTED:
        router.add(method, P + path, _unsupported(feature))
        if method == "POST":
            router.add("PUT", P + path, _unsupported(feature))
