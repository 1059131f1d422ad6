"""The OpenAPI 3.1 description of the REST API, served at GET /v1/openapi.json.

Generated from the router's table: every route's declaration carries its facts
(``router.Operation``: summary, tags, action, schemas, status), and this module adds only what
routes share: the component schemas, parameters and error responses, and the rules every route
follows (``/v1`` routes need a bearer token; an approvable action may answer 202 and accepts
``X-Approval-ID``). A route without a declaration is left out, and a test checks both ways that
the document and the router agree. docs/api.md is the prose reference for the same operations.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from .. import __version__
from ..control.policy import APPROVABLE, SYSTEM_APPROVABLE
from ..domain.model import (
    MAX_NAME,
    NEW_DESCRIPTION_PATTERN,
    NEW_NAME_PATTERN,
    PAGE_TOKEN_PATTERN,
    PLAIN_TEXT_PATTERN,
    TAG_PATTERN,
    UUID_PATTERN,
)
from ..service.tokens import MAX_EXP
from .handlers.common import MAX_VERSION
from .router import Operation, Route


def _ref(name: str, kind: str = "schemas") -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


# Canonical standard base64 (padding, no stray bits): the only spelling the server accepts.
B64_PATTERN = ("(?:[A-Za-z0-9+/]{4})*"
               "(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?")
B64 = {"type": "string", "contentEncoding": "base64", "pattern": f"^{B64_PATTERN}$"}
B64_NONEMPTY_PATTERN = ("(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|"
                        "[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)")
B64_NONEMPTY = {**B64, "pattern": f"^{B64_NONEMPTY_PATTERN}$"}
TOKEN = {"type": "string", "pattern": f"^fhsm:v[1-9][0-9]{{0,8}}:{B64_NONEMPTY_PATTERN}$",
         "description": "fhsm:v<version>:<canonical base64 of at least one byte>"}
# What decrypt and unwrap take: FerroHSM's tokens and the same tokens in Vault's spelling
TOKEN_IN = {"type": "string",
            "pattern": f"^(?:fhsm|vault):v[1-9][0-9]{{0,8}}:{B64_NONEMPTY_PATTERN}$",
            "description": "fhsm:v<version>:<canonical base64 of at least one byte> "
                           "(or vault:v…, the same token as the transit API spells it)"}
# Text the server keeps in records (reasons, comments, jti): model.PLAIN_TEXT_PATTERN.
PLAIN_TEXT = {"type": "string", "pattern": f"^{PLAIN_TEXT_PATTERN}$",
              "description": "no control, line-separator, bidi-override or invisible "
                             "characters (tag characters U+E0000-E007F included)"}
INT = {"type": "integer"}
VERSION = {"type": "integer", "minimum": 1, "maximum": MAX_VERSION}
TIME = {"type": "string", "format": "date-time"}
ALGORITHMS = ["aes-256-gcm", "rsa-2048", "rsa-4096", "ec-p256", "ec-p384"]
USAGES = ["encrypt", "wrap", "sign"]
ORIGINS = ["generated", "imported"]
WRAPPING_ALGORITHMS = ["RSA_OAEP_SHA256", "RSA_AES_KEY_WRAP_SHA256"]
KEY_STATES = ["active", "revoked", "destroy_scheduled", "destroyed"]
APPROVAL_STATES = ["pending", "approved", "denied", "expired", "executed"]
SIGNATURE_SCHEMES = ["rsa-pss-sha256", "rsa-pkcs1v15-sha256", "ecdsa-sha256", "ecdsa-sha384"]
# Exactly one of the two, and a null member counts as absent (see _nullable_optionals).
ONE_OF_MESSAGE_OR_DIGEST = [
    {"required": ["message"], "properties": {"message": {"type": "string"}}},
    {"required": ["digest"], "properties": {"digest": {"type": "string"}}}]
# A SHA-256 or SHA-384 digest (32 or 48 bytes), canonical base64; which one depends on the key's
# scheme, and the other size answers 409.
DIGEST = {"type": "string", "contentEncoding": "base64",
          "pattern": "^(?:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=|[A-Za-z0-9+/]{64})$"}
NULLABLE_STRING = {"type": ["string", "null"]}
DESCRIPTION = {"type": "string", "maxLength": 1024, "pattern": f"^{NEW_DESCRIPTION_PATTERN}$",
               "description": "no control characters other than tab and newline, no "
                              "bidirectional formatting or invisible characters (tag "
                              "characters U+E0000-E007F included)"}
UUID = {"type": "string", "format": "uuid", "pattern": f"^{UUID_PATTERN}$"}
NAME = {"type": "string", "maxLength": MAX_NAME, "pattern": f"^{NEW_NAME_PATTERN}$",
        "not": {"pattern": "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-"
                           "[0-9A-Fa-f]{12}$"},
        "description": "unique; must not look like a UUID"}
TAG = {"type": "string", "pattern": f"^{TAG_PATTERN}$"}
# Each algorithm with the usages it serves (crypto/algorithms.py).
ALGORITHM_USAGES = [
    {"properties": {"algorithm": {"const": "aes-256-gcm"}, "usage": {"enum": ["encrypt", "wrap"]}}},
    {"properties": {"algorithm": {"enum": ["rsa-2048", "rsa-4096", "ec-p256", "ec-p384"]},
                    "usage": {"const": "sign"}}}]

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message", "request_id"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                       "request_id": {"type": "string"},
                       "field": {"type": "string"}}}}},
    "KeyVersion": {"type": "object", "required": ["version", "state", "created_at"],
                   "properties": {
        "version": {"type": "integer"}, "state": {"enum": ["enabled", "archived", "destroyed"]},
        "created_at": TIME, "origin": {"enum": ORIGINS},
        "encryptions_reserved": {"type": "integer", "minimum": 0, "description":
                                 "aes-256-gcm encrypt keys: the AES-GCM encryptions all "
                                 "processes together have reserved with this version, of the "
                                 "2^32 one version may make"}}},
    "KeyHistoryEntry": {"type": "object", "required": ["at", "actor", "action"], "properties": {
        "at": TIME, "actor": {"type": "string"}, "action": {"type": "string"},
        "detail": {"type": "string"}}},
    "Key": {"type": "object", "required": [
        "id", "name", "description", "algorithm", "usage", "tags", "state", "primary_version",
        "versions", "created_at", "updated_at", "created_by", "destroy_after", "revision"],
        "properties": {
        "id": UUID, "name": NULLABLE_STRING,
        "description": {"type": "string"},
        "algorithm": {"enum": ALGORITHMS},
        "usage": {"enum": USAGES},
        "tags": {"type": "array", "items": {"type": "string"}},
        "state": {"enum": KEY_STATES},
        "primary_version": {"type": "integer"},
        "versions": {"type": "array", "items": _ref("KeyVersion")},
        "created_at": TIME, "updated_at": TIME,
        "created_by": {"type": "string"},
        "destroy_after": {"type": ["string", "null"], "format": "date-time"},
        "revision": {"type": "integer", "description": "changes whenever the key does"},
        "origin": {"enum": ORIGINS, "description": "generated here, or imported (BYOK): the "
                   "first version's origin; each version has its own"},
        "history": {"type": "array", "items": _ref("KeyHistoryEntry")}}},
    "KeyList": {"type": "object", "required": ["keys", "next_page_token"], "properties": {
        "keys": {"type": "array", "items": _ref("Key")},
        "total": {"type": "integer", "description": "keys matching the filters, all pages"},
        "unreadable": {"type": "array", "items": {"type": "string"}, "description":
                       "ids in this page whose stored records failed their integrity check"},
        "next_page_token": NULLABLE_STRING}},
    "CreateKey": {"type": "object", "additionalProperties": False,
                  "required": ["algorithm", "usage"], "oneOf": ALGORITHM_USAGES, "properties": {
                      "algorithm": {"enum": ALGORITHMS}, "usage": {"enum": USAGES},
                      "name": NAME, "description": DESCRIPTION,
                      "tags": {"type": "array", "maxItems": 32, "uniqueItems": True,
                               "description": "immutable after creation", "items": TAG},
                      "import": {**_ref("ImportMaterial"), "description": "create the key "
                                 "from this wrapped material (origin imported) instead of "
                                 "generating it; when its tags put import under dual control "
                                 "the answer is 202 approval_required (docs/api.md)"}}},
    "ImportMaterial": {"type": "object", "additionalProperties": False,
                       "required": ["import_job_id", "wrapping_algorithm", "wrapped_material"],
                       "properties": {
                           "import_job_id": UUID,
                           "wrapping_algorithm": {"enum": WRAPPING_ALGORITHMS},
                           "wrapped_material": {**B64_NONEMPTY, "description": "RSA_OAEP_SHA256: "
                               "one RSA-OAEP-SHA256 block (384 bytes); RSA_AES_KEY_WRAP_SHA256: "
                               "that block (an AES-256 key) followed by the material wrapped "
                               "with it (RFC 5649). Material: 32 raw bytes for aes-256-gcm, "
                               "PKCS#8 DER for RSA and EC"}}},
    "ImportJob": {"type": "object", "required": [
        "import_job_id", "public_key", "wrapping_key_spec", "wrapping_algorithms",
        "created_at", "expires_at"], "properties": {
            "import_job_id": UUID,
            "public_key": {"type": "string", "description": "PEM of the RSA-3072 wrapping key"},
            "wrapping_key_spec": {"const": "RSA_3072"},
            "wrapping_algorithms": {"type": "array", "items": {"enum": WRAPPING_ALGORITHMS}},
            "created_at": TIME,
            "expires_at": {**TIME, "description": "24 hours after creation; a job is used "
                                                  "once"}}},
    "UpdateKey": {"type": "object", "additionalProperties": False, "required": ["description"],
                  "properties": {"description": DESCRIPTION}},
    "Rollback": {"type": "object", "additionalProperties": False, "required": ["version"],
                 "properties": {"version": VERSION}},
    "Revoke": {"type": "object", "additionalProperties": False,
               "properties": {"reason": {**PLAIN_TEXT, "maxLength": 256}}},
    "Empty": {"type": "object", "additionalProperties": False},
    "PublicKey": {"type": "object", "required": ["version", "pem"],
                  "properties": {"version": INT, "pem": {"type": "string"}}},
    "EncryptRequest": {"type": "object", "additionalProperties": False, "required": ["plaintext"],
                       "properties": {"plaintext": B64, "aad": B64}},
    "EncryptResponse": {"type": "object", "required": ["ciphertext", "key_id", "key_version"],
                        "properties": {
        "ciphertext": TOKEN, "key_id": {"type": "string"}, "key_version": {"type": "integer"}}},
    "DecryptRequest": {"type": "object", "additionalProperties": False,
                       "required": ["ciphertext"], "properties": {"ciphertext": TOKEN_IN, "aad": B64}},
    "DecryptResponse": {"type": "object", "required": ["plaintext", "key_version"],
                        "properties": {"plaintext": B64,
                                                         "key_version": {"type": "integer"}}},
    "SignRequest": {"type": "object", "additionalProperties": False,
                    "oneOf": ONE_OF_MESSAGE_OR_DIGEST, "properties": {
                        "message": B64, "digest": DIGEST, "algorithm": {"enum": SIGNATURE_SCHEMES}}},
    "SignResponse": {"type": "object", "required": ["signature", "key_version", "algorithm"],
                     "properties": {
        "signature": B64, "key_version": {"type": "integer"}, "algorithm": {"type": "string"}}},
    "VerifyRequest": {"type": "object", "additionalProperties": False, "required": ["signature"],
                      "oneOf": ONE_OF_MESSAGE_OR_DIGEST,
                      "properties": {"message": B64, "digest": DIGEST, "signature": B64,
                                     "algorithm": {"enum": SIGNATURE_SCHEMES},
                                     "key_version": VERSION}},
    "VerifyResponse": {"type": "object", "required": ["valid", "key_version"], "properties": {"valid": {"type": "boolean"},
                                                        "key_version": {"type": "integer"}}},
    "WrapRequest": {"type": "object", "additionalProperties": False,
                    "required": ["key_material"], "properties": {"key_material": B64_NONEMPTY}},
    "WrapResponse": {"type": "object", "required": ["wrapped", "key_id", "key_version"],
                     "properties": {
        "wrapped": TOKEN, "key_id": {"type": "string"}, "key_version": {"type": "integer"}}},
    "UnwrapRequest": {"type": "object", "additionalProperties": False, "required": ["wrapped"],
                      "properties": {"wrapped": TOKEN_IN}},
    "UnwrapResponse": {"type": "object", "required": ["key_material", "key_version"],
                       "properties": {"key_material": B64,
                                                        "key_version": {"type": "integer"}}},
    "DataKeyRequest": {"type": "object", "additionalProperties": False, "properties": {
        "bits": {"enum": [128, 192, 256], "default": 256},
        "include_plaintext": {"type": "boolean", "default": True,
                              "description": "false: answer only the ciphertext"},
        "aad": B64}},
    "DataKeyResponse": {"type": "object", "required": ["ciphertext", "key_id", "key_version"],
                        "properties": {
        "plaintext": {**B64, "description": "the data key (absent with include_plaintext "
                                            "false): use it, then forget it"},
        "ciphertext": {**TOKEN, "description": "the data key encrypted under this key: keep "
                                               "it beside the data; decrypt gives it back"},
        "key_id": {"type": "string"}, "key_version": {"type": "integer"}}},
    "BatchItemError": {"type": "object", "required": ["error"], "properties": {
        "error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"},
            "field": {"type": "string"}}},
        "approval": _ref("Approval")},
        "description": "one item's refusal: the code and message its own request would have "
                       "had (approval: the item was parked for dual control)"},
    "Health": {"type": "object", "required": ["status"], "properties": {
        "status": {"enum": ["ok", "degraded"]}, "version": {"type": "string"},
        "reason": {"type": "string"},
        "uptime_seconds": {"type": "number"}, "store": {"type": "object"},
        "audit": {"type": "object"}, "auth": {"type": "object"},
        "rate_limit": {"type": "object"}, "cache": {"type": "object"},
        "key_records": {"type": "object"},
        "tls": {"type": "object", "description": "the served certificate: mode, serial (hex), "
                "not_before, not_after (RFC 3339 UTC), ocsp (off, good, revoked, unknown, "
                "unavailable)"}}},
    "AuditRecord": {"type": "object", "required": [
        "v", "id", "seq", "ts", "action", "outcome", "prev_hash", "hash", "hmac"], "properties": {
            "v": {"type": "integer"}, "id": {"type": "string"}, "seq": {"type": "integer"},
            "ts": TIME, "actor": {"type": "string"}, "role": {"type": "string"},
            "action": {"type": "string"}, "key_id": NULLABLE_STRING,
            "key_version": {"type": ["integer", "null"]},
            "outcome": {"enum": ["success", "denied", "error", "intent", "rolled_back"]},
            "message": {"type": "string"},
            "request_id": NULLABLE_STRING, "correlation_id": NULLABLE_STRING,
            "trace_id": NULLABLE_STRING, "session": NULLABLE_STRING,
            "client_fingerprint": NULLABLE_STRING, "source_ip": NULLABLE_STRING,
            "details": {"type": "object"},
            "prev_hash": {"type": "string", "description": "hash of the previous record"},
            "hash": {"type": "string"}, "hmac": {"type": "string"}}},
    "AuditPage": {"type": "object", "required": ["records", "head_seq", "next_after_seq"],
                  "properties": {
        "records": {"type": "array", "items": _ref("AuditRecord")},
        "head_seq": {"type": "integer"},
        "next_after_seq": {"type": ["integer", "null"]}}},
    "ApprovalVote": {"type": "object", "required": ["actor", "role", "at"], "properties": {
        "actor": {"type": "string"}, "role": {"enum": ["administrator", "operator"]},
        "at": TIME, "comment": {"type": "string"},
        "signature": {**B64, "description": "a signed vote: base64 signature over "
                      "the vote message (README, Approvers who cannot be forged)"},
        "key_fingerprint": {"type": "string", "description": "sha256:<hex> of the "
                            "approver's registered public key (DER SubjectPublicKeyInfo)"}}},
    "Approval": {"type": "object", "required": [
        "id", "action", "key_id", "request_hash", "required", "approvals", "state", "expires_at"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "action": {"type": "string", "description": "e.g. key.destroy, crypto.unwrap"},
            "key_id": {"type": "string", "format": "uuid"},
            "request_hash": {"type": "string", "description": "SHA-256 (hex) binding the "
                             "approval to the exact action, key and arguments"},
            "required": {"type": "integer", "minimum": 1},
            "approvals": {"type": "array", "items": _ref("ApprovalVote")},
            "denied_by": {"oneOf": [_ref("ApprovalVote"), {"type": "null"}]},
            "state": {"enum": APPROVAL_STATES},
            "expires_at": TIME,
            "requested_by": {"type": "string"},
            "created_at": TIME, "updated_at": TIME,
            "executed_at": {"type": ["string", "null"], "format": "date-time"},
            "summary": {"type": "string", "description": "non-secret view of the arguments"}}},
    "ApprovalList": {"type": "object", "required": ["approvals", "next_page_token"],
                     "properties": {
        "approvals": {"type": "array", "items": _ref("Approval")},
        "next_page_token": NULLABLE_STRING}},
    "ApprovalRequired": {"type": "object", "required": ["error", "approval"], "properties": {
        "error": {"type": "object", "properties": {
            "code": {"const": "approval_required"}, "message": {"type": "string"},
            "request_id": {"type": "string"}}, "required": ["code", "message", "request_id"]},
        "approval": _ref("Approval")}},
    "ApprovalVoteRequest": {"type": "object", "additionalProperties": False,
                            "properties": {"comment": {**PLAIN_TEXT, "maxLength": 256},
                                           "signature": {
                                               **B64, "maxLength": 200,
                                               "description": "base64 Ed25519 or ECDSA P-256 "
                                               "signature over ferrohsm-vote-v1 (approval id, "
                                               "request hash, decision); required when "
                                               "[approvals].require_vote_signature is on"}}},
    "RevokeToken": {"type": "object", "additionalProperties": False, "required": ["jti"],
                    "properties": {
                        "jti": {**PLAIN_TEXT, "minLength": 1, "maxLength": 128},
                        "exp": {"type": "integer", "minimum": 0, "maximum": MAX_EXP,
                                "description": "the token's expiry (Unix time); the entry is "
                                "kept at least that long"}}},
    "TokenRevoked": {"type": "object", "required": ["jti", "revoked", "until"], "properties": {
        "jti": {"type": "string"}, "revoked": {"const": True},
        "until": {**TIME, "description": "the deny-list entry is kept until then"}}},
    "WhoAmI": {"type": "object", "required": ["subject", "role", "tags", "expires_at"],
               "properties": {
                   "subject": {"type": "string"},
                   "role": {"enum": ["administrator", "operator", "auditor", "service"]},
                   "tags": {"type": ["array", "null"], "items": {"type": "string"},
                            "description": "a service token's tag scope; null: no scope"},
                   "expires_at": {**TIME, "type": ["string", "null"]},
                   "jti": {"type": ["string", "null"]},
                   "session": {"type": ["string", "null"]}}},
    "UnsealShare": {"type": "object", "additionalProperties": False, "required": ["share"],
                    "properties": {"share": {"type": "string", "maxLength": 400,
                                             "description": "fhsm1-<split>-<n>-<value>, as "
                                             "printed by `ferrohsm init` or `ferrohsm rekey`"}}},
    "RekeyRequest": {"type": "object", "additionalProperties": False, "properties": {
        "reason": {**PLAIN_TEXT, "maxLength": 256,
                   "description": "why; bound to the approval and shown to approvers"}}},
    "RekeyResult": {"type": "object", "required": ["rekeyed", "rewritten"], "properties": {
        "rekeyed": {"type": "boolean"},
        "rewritten": {"type": "integer", "description": "key records re-sealed and re-MACed"},
        "master_key_file": {"type": "string", "description": "where the server wrote the new "
                            "master key (0600); the key itself is never returned"}}},
    "SealStatus": {"type": "object", "required": ["sealed"], "properties": {
        "sealed": {"type": "boolean"},
        "progress": {"type": "integer", "description": "shares submitted towards the threshold"},
        "threshold": {"type": "integer"}, "shares": {"type": "integer"}}},
    "Backup": {"type": "object", "required": ["archive", "sha256", "size", "header"],
               "properties": {
                   "archive": {"type": "string", "contentEncoding": "base64",
                               "description": "the archive file (README, Backup and restore)"},
                   "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                   "size": {"type": "integer", "minimum": 0},
                   "header": {"type": "object", "description": "the archive's public header"}}},
}


# The batch forms of encrypt, decrypt, sign and verify (docs/api.md, Batches). An item that is
# not a valid single body is answered with its own error inside a 200, so the schema of an item
# admits anything; the single body it should be is named first.
MAX_BATCH_ITEMS = 1000  # [crypto].max_batch_items by default; more answers 400
for _stem in ("Encrypt", "Decrypt", "Sign", "Verify"):
    SCHEMAS[f"{_stem}Batch"] = {
        "type": "object", "additionalProperties": False, "required": ["batch"], "properties": {
            "batch": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH_ITEMS,
                      "description": f"each item a {_stem}Request body; at most "
                                     "[crypto].max_batch_items (400 above)",
                      "items": {"anyOf": [_ref(f"{_stem}Request"), {}]}}}}
    SCHEMAS[f"{_stem}Call"] = {"anyOf": [_ref(f"{_stem}Request"), _ref(f"{_stem}Batch")]}
    SCHEMAS[f"{_stem}Results"] = {"type": "object", "required": ["results"], "properties": {
        "results": {"type": "array", "description": "one per item, in order", "items": {
            "anyOf": [_ref(f"{_stem}Response"), _ref("BatchItemError")]}}}}
    SCHEMAS[f"{_stem}Answer"] = {"anyOf": [_ref(f"{_stem}Response"), _ref(f"{_stem}Results")]}


def _nullable_optionals(schema: dict[str, Any]) -> dict[str, Any]:
    """A request schema as the server reads it: a member sent as null counts as absent
    (handlers/common.py ``fields``), so each optional member may also be null."""
    required = set(schema.get("required", ()))
    properties = {name: prop if name in required else {"anyOf": [prop, {"type": "null"}]}
                  for name, prop in schema.get("properties", {}).items()}
    return {**schema, "properties": properties} if properties else schema


# Request bodies are the schemas that refuse unknown members.
SCHEMAS.update({name: _nullable_optionals(schema) for name, schema in SCHEMAS.items()
                if schema.get("additionalProperties") is False})

# Links (for clients and stateful fuzzers): from an answer to the operations it makes possible.
KEY_REF = {"key": "$response.body#/id"}
KEY_LINKS: dict[str, Any] = {
    **{op: {"operationId": op, "parameters": KEY_REF} for op in (
        "getKey", "updateKey", "rotateKey", "revokeKey", "destroyKey", "cancelDestroyKey",
        "destroyKeyVersion",
        "getPublicKey", "rollbackKey", "encrypt", "decrypt", "sign", "verify", "wrap",
        "unwrap", "dataKey", "importKeyVersion")}}
LINKS: dict[str, dict[str, Any]] = {
    **{op: KEY_LINKS for op in ("createKey", "getKey", "updateKey", "rotateKey", "rollbackKey",
                                "revokeKey", "destroyKey", "cancelDestroyKey",
                                "importKeyVersion")},
    "encrypt": {"decrypt": {"operationId": "decrypt",
                            "parameters": {"key": "$response.body#/key_id"},
                            "requestBody": {"ciphertext": "$response.body#/ciphertext"}}},
    "dataKey": {"decrypt": {"operationId": "decrypt",
                            "parameters": {"key": "$response.body#/key_id"},
                            "requestBody": {"ciphertext": "$response.body#/ciphertext"}}},
    "wrap": {"unwrap": {"operationId": "unwrap", "parameters": {"key": "$response.body#/key_id"},
                        "requestBody": {"wrapped": "$response.body#/wrapped"}}},
}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
    if description:
        param["description"] = description
    return param


PAGE_LIMIT = {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
PARAMETERS: dict[str, Any] = {
    "key": {"name": "key", "in": "path", "required": True, "description": "key id or unique name",
            "schema": {"type": "string", "maxLength": MAX_NAME,
                       "pattern": f"^(?:{UUID_PATTERN}|{NEW_NAME_PATTERN})$"}},
    "approvalId": {"name": "id", "in": "path", "required": True, "description": "approval id",
                   "schema": UUID},
    "versionNumber": {"name": "n", "in": "path", "required": True,
                      "description": "key version number", "schema": VERSION},
    "keyState": _query("state", {"enum": KEY_STATES}),
    "algorithm": _query("algorithm", {"enum": ALGORITHMS}),
    "usage": _query("usage", {"enum": USAGES}),
    "tag": _query("tag", TAG, "keys carrying this tag"),
    "namePrefix": _query("name_prefix", {"type": "string"}, "keys whose name starts with this"),
    "limit": _query("limit", PAGE_LIMIT, "page size"),
    "pageToken": _query("page_token", {"type": "string", "pattern": f"^{PAGE_TOKEN_PATTERN}$"},
                        "next_page_token of the previous page"),
    "approvalState": _query("state", {"enum": APPROVAL_STATES}),
    "afterSeq": _query("after_seq", {"type": "integer", "minimum": 0, "maximum": 10**15,
                                     "default": 0},
                       "records with a larger seq"),
    "version": _query("version", VERSION,
                      "key version (default: the primary)"),
    "approvalHeader": {"name": "X-Approval-ID", "in": "header", "required": False,
                       "description": "id of the approved request this call repeats "
                                      "(a malformed id is a 400)",
                       "schema": UUID},
    "ifNoneMatch": {"name": "If-None-Match", "in": "header", "required": False,
                    "description": "an ETag from an earlier answer: 304 while it still matches",
                    "schema": {"type": "string"}},
}
# Path parameter (as the router names it) -> its component parameter.
PATH_PARAMETERS = {"key": "key", "id": "approvalId", "n": "versionNumber"}

ERRORS = {"400": "bad_request", "401": "unauthenticated", "403": "forbidden",
          "404": "not_found", "409": "conflict", "410": "gone", "413": "payload_too_large",
          "415": "unsupported_media_type", "429": "rate_limited", "500": "internal",
          "503": "unavailable"}
ERROR_MEANINGS = {
    "bad_request": "malformed request: JSON, unknown field, base64, parameter",
    "unauthenticated": "missing or invalid bearer token",
    "forbidden": "the token's role or tags do not allow this",
    "not_found": "no such key, approval or endpoint",
    "conflict": "the key's state, usage or algorithm does not allow this",
    "gone": "the key was destroyed",
    "payload_too_large": "the body or input is over the limit",
    "unsupported_media_type": "a request body must be application/json",
    "rate_limited": "too many requests: see Retry-After",
    "internal": "server failure (no details in the body)",
    "unavailable": "the key store or the audit log cannot take the request now",
}
TOKEN_ERRORS = {"401", "403"}  # only routes that check a token answer these
BODY_ERRORS = {"413", "415"}  # only routes that take a body answer these
PATH_ERRORS = {"404"}  # only routes with path parameters answer this
DECLARED_ERRORS = {"409", "410"}  # only routes that declare them (Operation.errors)
# From a parked request (202) to its approval: describe it, vote on it.
APPROVAL_LINKS = {
    op: {"operationId": op, "parameters": {"id": "$response.body#/approval/id"}}
    for op in ("getApproval", "approveRequest", "denyRequest")}
RESPONSES: dict[str, Any] = {
    **{code: {"description": f"{code}: {meaning}",
              "content": {"application/json": {"schema": _ref("Error")}}}
       for code, meaning in ERROR_MEANINGS.items()},
    "approval_required": {
        "description": "approval_required: parked until a quorum approves (dual control); "
                       "repeat the request with X-Approval-ID: approval.id once approved",
        "content": {"application/json": {"schema": _ref("ApprovalRequired")}},
        "links": APPROVAL_LINKS},
    "not_modified": {"description": "not modified: the If-None-Match ETag still matches"},
}
TAGS = [
    {"name": "keys", "description": "Key lifecycle: create, list, describe, rotate, revoke, destroy"},
    {"name": "crypto", "description": "Cryptographic operations with a key"},
    {"name": "approvals", "description": "Dual control: parked requests and their votes"},
    {"name": "audit", "description": "The tamper-evident audit log"},
    {"name": "tokens", "description": "Bearer token revocation"},
    {"name": "system", "description": "Health, metrics and this document (no token needed for "
                                      "health and metrics)"},
    {"name": "dashboard", "description": "The web dashboard (static files, no token needed)"},
]
KNOWN_TAGS = {t["name"] for t in TAGS}


def _approvable(doc: Operation) -> bool:
    return doc.action is not None and (doc.action in APPROVABLE
                                       or doc.action in SYSTEM_APPROVABLE)


def _authenticated(route: Route) -> bool:
    """The application authenticates every route under /v1/ (api/application.py)."""
    return route.template.startswith("/v1/")


def _component(kind: str, table: dict[str, Any], name: str) -> dict[str, str]:
    if name not in table:
        raise ValueError(f"no {kind} component named {name!r}")
    return _ref(name, kind)


def _parameters(route: Route, doc: Operation) -> list[dict[str, str]]:
    names = [] if route.is_prefix else [PATH_PARAMETERS.get(p, p) for p in route.params]
    names += doc.query
    if doc.etag:
        names.append("ifNoneMatch")
    if _approvable(doc):
        names.append("approvalHeader")
    return [_component("parameters", PARAMETERS, n) for n in names]


def _request_body(schema: str) -> dict[str, Any]:
    """A body is required when its schema requires a member; otherwise it may be left out."""
    spec = SCHEMAS.get(schema, {})
    required = "required" in spec or "oneOf" in spec or "anyOf" in spec
    return {"required": required, "content": {
        "application/json": {"schema": _component("schemas", SCHEMAS, schema)}}}


def _success(route: Route, doc: Operation) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": HTTPStatus(doc.status).phrase}
    if route.name in LINKS:
        answer["links"] = LINKS[route.name]
    if doc.media_type is not None:
        schema = (_component("schemas", SCHEMAS, doc.response) if doc.response else
                  {"type": "object"} if doc.media_type == "application/json" else
                  {"type": "string"})
        answer["content"] = {doc.media_type: {"schema": schema}}
    return answer


def _responses(route: Route, doc: Operation) -> dict[str, Any]:
    answers: dict[str, Any] = {str(doc.status): _success(route, doc)}
    if _approvable(doc):
        answers["202"] = _component("responses", RESPONSES, "approval_required")
    if doc.etag:
        answers["304"] = _component("responses", RESPONSES, "not_modified")
    for code, name in ERRORS.items():
        if _answers(route, doc, code):
            answers[code] = _component("responses", RESPONSES, name)
    for status, description, schema in doc.extra:
        answers[str(status)] = {"description": description}
        if schema is not None:
            answers[str(status)]["content"] = {
                "application/json": {"schema": _component("schemas", SCHEMAS, schema)}}
    return dict(sorted(answers.items()))


def _answers(route: Route, doc: Operation, code: str) -> bool:
    """Whether ``route`` can answer the generic error ``code`` (see Operation.errors)."""
    if code in TOKEN_ERRORS:
        return _authenticated(route)
    if code in BODY_ERRORS:
        return doc.request is not None
    if code in PATH_ERRORS:
        return bool(route.params)
    if code in DECLARED_ERRORS:
        return int(code) in doc.errors
    return True


def _operation(route: Route, doc: Operation) -> dict[str, Any]:
    if not route.name or not set(doc.tags) <= KNOWN_TAGS:
        raise ValueError(f"{route.method} {route.template}: a documented route needs a name "
                         f"(its operationId) and known tags")
    op: dict[str, Any] = {"operationId": route.name, "summary": doc.summary,
                          "tags": list(doc.tags)}
    if doc.description:
        op["description"] = doc.description
    if doc.action is not None:
        op["x-ferrohsm-action"] = str(doc.action)
    parameters = _parameters(route, doc)
    if parameters:
        op["parameters"] = parameters
    if doc.request is not None:
        op["requestBody"] = _request_body(doc.request)
    op["responses"] = _responses(route, doc)
    if _authenticated(route):
        op["security"] = [{"bearer": []}]
    elif doc.optional_auth:
        op["security"] = [{}, {"bearer": []}]  # anonymous, or with a token for more
    return op


def document(routes: Iterable[Route]) -> dict[str, Any]:
    """The whole document for ``routes`` (the router's table); routes without ``doc`` are
    left out. ValueError when a declaration names an unknown component or tag."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if route.doc is not None:
            paths.setdefault(route.template, {})[route.method.lower()] = _operation(route,
                                                                                   route.doc)
    return {
        "openapi": "3.1.0",
        "info": {"title": "FerroHSM", "version": __version__,
                 "description": "Software HSM: sealed keys, cryptographic operations, audit. "
                                "The reference in prose is docs/api.md in the repository."},
        "servers": [{"url": "/"}],
        "tags": TAGS,
        "paths": paths,
        "components": {"schemas": SCHEMAS, "parameters": PARAMETERS, "responses": RESPONSES,
                       "securitySchemes": {"bearer": {
                           "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "a short-lived JWT whose role claim grants access"}}},
    }
