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
from ..control.policy import APPROVABLE
from .router import Operation, Route


def _ref(name: str, kind: str = "schemas") -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


B64 = {"type": "string", "contentEncoding": "base64"}
TOKEN = {"type": "string", "pattern": "^fhsm:v[1-9][0-9]*:[A-Za-z0-9+/=]+$"}
TIME = {"type": "string", "format": "date-time"}
ALGORITHMS = ["aes-256-gcm", "rsa-2048", "rsa-4096", "ec-p256", "ec-p384"]
USAGES = ["encrypt", "wrap", "sign"]
KEY_STATES = ["active", "revoked", "destroy_scheduled", "destroyed"]
APPROVAL_STATES = ["pending", "approved", "denied", "expired", "executed"]
SIGNATURE_SCHEMES = ["rsa-pss-sha256", "rsa-pkcs1v15-sha256", "ecdsa-sha256", "ecdsa-sha384"]
ONE_OF_MESSAGE_OR_DIGEST = [{"required": ["message"]}, {"required": ["digest"]}]
NULLABLE_STRING = {"type": ["string", "null"]}
DESCRIPTION = {"type": "string", "maxLength": 1024, "description": "no control characters "
               "other than tab and newline"}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message", "request_id"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                       "request_id": {"type": "string"}}}}},
    "KeyVersion": {"type": "object", "properties": {
        "version": {"type": "integer"}, "state": {"enum": ["enabled", "archived", "destroyed"]},
        "created_at": TIME}},
    "KeyHistoryEntry": {"type": "object", "properties": {
        "at": TIME, "actor": {"type": "string"}, "action": {"type": "string"},
        "detail": {"type": "string"}}},
    "Key": {"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"}, "name": NULLABLE_STRING,
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
        "history": {"type": "array", "items": _ref("KeyHistoryEntry")}}},
    "KeyList": {"type": "object", "properties": {
        "keys": {"type": "array", "items": _ref("Key")},
        "total": {"type": "integer", "description": "keys matching the filters, all pages"},
        "unreadable": {"type": "array", "items": {"type": "string"}, "description":
                       "ids in this page whose stored records failed their integrity check"},
        "next_page_token": NULLABLE_STRING}},
    "CreateKey": {"type": "object", "additionalProperties": False,
                  "required": ["algorithm", "usage"], "properties": {
                      "algorithm": {"enum": ALGORITHMS}, "usage": {"enum": USAGES},
                      "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                               "description": "unique; must not look like a UUID"},
                      "description": DESCRIPTION,
                      "tags": {"type": "array", "maxItems": 32, "uniqueItems": True,
                               "description": "immutable after creation",
                               "items": {"type": "string",
                                         "pattern": "^[a-z0-9][a-z0-9_.-]{0,62}$"}}}},
    "UpdateKey": {"type": "object", "additionalProperties": False, "required": ["description"],
                  "properties": {"description": DESCRIPTION}},
    "Rollback": {"type": "object", "additionalProperties": False, "required": ["version"],
                 "properties": {"version": {"type": "integer"}}},
    "Revoke": {"type": "object", "additionalProperties": False,
               "properties": {"reason": {"type": "string", "maxLength": 256}}},
    "Empty": {"type": "object", "additionalProperties": False},
    "PublicKey": {"type": "object", "properties": {"version": {"type": "integer"},
                                                   "pem": {"type": "string"}}},
    "EncryptRequest": {"type": "object", "additionalProperties": False, "required": ["plaintext"],
                       "properties": {"plaintext": B64, "aad": B64}},
    "EncryptResponse": {"type": "object", "properties": {
        "ciphertext": TOKEN, "key_id": {"type": "string"}, "key_version": {"type": "integer"}}},
    "DecryptRequest": {"type": "object", "additionalProperties": False,
                       "required": ["ciphertext"], "properties": {"ciphertext": TOKEN, "aad": B64}},
    "DecryptResponse": {"type": "object", "properties": {"plaintext": B64,
                                                         "key_version": {"type": "integer"}}},
    "SignRequest": {"type": "object", "additionalProperties": False,
                    "oneOf": ONE_OF_MESSAGE_OR_DIGEST, "properties": {
                        "message": B64, "digest": B64, "algorithm": {"enum": SIGNATURE_SCHEMES}}},
    "SignResponse": {"type": "object", "properties": {
        "signature": B64, "key_version": {"type": "integer"}, "algorithm": {"type": "string"}}},
    "VerifyRequest": {"type": "object", "additionalProperties": False, "required": ["signature"],
                      "oneOf": ONE_OF_MESSAGE_OR_DIGEST,
                      "properties": {"message": B64, "digest": B64, "signature": B64,
                                     "algorithm": {"enum": SIGNATURE_SCHEMES},
                                     "key_version": {"type": "integer"}}},
    "VerifyResponse": {"type": "object", "properties": {"valid": {"type": "boolean"},
                                                        "key_version": {"type": "integer"}}},
    "WrapRequest": {"type": "object", "additionalProperties": False,
                    "required": ["key_material"], "properties": {"key_material": B64}},
    "WrapResponse": {"type": "object", "properties": {
        "wrapped": TOKEN, "key_id": {"type": "string"}, "key_version": {"type": "integer"}}},
    "UnwrapRequest": {"type": "object", "additionalProperties": False, "required": ["wrapped"],
                      "properties": {"wrapped": TOKEN}},
    "UnwrapResponse": {"type": "object", "properties": {"key_material": B64,
                                                        "key_version": {"type": "integer"}}},
    "Health": {"type": "object", "required": ["status"], "properties": {
        "status": {"enum": ["ok", "degraded"]}, "version": {"type": "string"},
        "reason": {"type": "string"},
        "uptime_seconds": {"type": "number"}, "store": {"type": "object"},
        "audit": {"type": "object"}, "auth": {"type": "object"},
        "rate_limit": {"type": "object"}, "cache": {"type": "object"},
        "key_records": {"type": "object"}}},
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
    "AuditPage": {"type": "object", "properties": {
        "records": {"type": "array", "items": _ref("AuditRecord")},
        "head_seq": {"type": "integer"},
        "next_after_seq": {"type": ["integer", "null"]}}},
    "ApprovalVote": {"type": "object", "properties": {
        "actor": {"type": "string"}, "role": {"enum": ["administrator", "operator"]},
        "at": TIME, "comment": {"type": "string"}}},
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
    "ApprovalList": {"type": "object", "properties": {
        "approvals": {"type": "array", "items": _ref("Approval")},
        "next_page_token": NULLABLE_STRING}},
    "ApprovalRequired": {"type": "object", "required": ["error", "approval"], "properties": {
        "error": {"type": "object", "properties": {
            "code": {"const": "approval_required"}, "message": {"type": "string"},
            "request_id": {"type": "string"}}},
        "approval": _ref("Approval")}},
    "ApprovalVoteRequest": {"type": "object", "additionalProperties": False,
                            "properties": {"comment": {"type": "string", "maxLength": 256}}},
    "RevokeToken": {"type": "object", "additionalProperties": False, "required": ["jti"],
                    "properties": {
                        "jti": {"type": "string", "minLength": 1, "maxLength": 128},
                        "exp": {"type": "integer", "description": "the token's expiry (Unix "
                                "time); the entry is kept at least that long"}}},
    "TokenRevoked": {"type": "object", "properties": {
        "jti": {"type": "string"}, "revoked": {"const": True},
        "until": {**TIME, "description": "the deny-list entry is kept until then"}}},
}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
    if description:
        param["description"] = description
    return param


PAGE_LIMIT = {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
PARAMETERS: dict[str, Any] = {
    "key": {"name": "key", "in": "path", "required": True, "description": "key id or unique name",
            "schema": {"type": "string"}},
    "approvalId": {"name": "id", "in": "path", "required": True, "description": "approval id",
                   "schema": {"type": "string"}},
    "keyState": _query("state", {"enum": KEY_STATES}),
    "algorithm": _query("algorithm", {"enum": ALGORITHMS}),
    "usage": _query("usage", {"enum": USAGES}),
    "tag": _query("tag", {"type": "string"}, "keys carrying this tag"),
    "namePrefix": _query("name_prefix", {"type": "string"}, "keys whose name starts with this"),
    "limit": _query("limit", PAGE_LIMIT, "page size"),
    "pageToken": _query("page_token", {"type": "string"},
                        "next_page_token of the previous page (opaque)"),
    "approvalState": _query("state", {"enum": APPROVAL_STATES}),
    "afterSeq": _query("after_seq", {"type": "integer", "minimum": 0, "default": 0},
                       "records with a larger seq"),
    "version": _query("version", {"type": "integer", "minimum": 1},
                      "key version (default: the primary)"),
    "approvalHeader": {"name": "X-Approval-ID", "in": "header", "required": False,
                       "description": "id of the approved request this call repeats",
                       "schema": {"type": "string"}},
    "ifNoneMatch": {"name": "If-None-Match", "in": "header", "required": False,
                    "description": "an ETag from an earlier answer: 304 while it still matches",
                    "schema": {"type": "string"}},
}
# Path parameter (as the router names it) -> its component parameter.
PATH_PARAMETERS = {"key": "key", "id": "approvalId"}

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
RESPONSES: dict[str, Any] = {
    **{code: {"description": f"{code}: {meaning}",
              "content": {"application/json": {"schema": _ref("Error")}}}
       for code, meaning in ERROR_MEANINGS.items()},
    "approval_required": {
        "description": "approval_required: parked until a quorum approves (dual control)",
        "content": {"application/json": {"schema": _ref("ApprovalRequired")}}},
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
    return doc.action is not None and doc.action in APPROVABLE


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
    return {"required": "required" in spec or "oneOf" in spec, "content": {
        "application/json": {"schema": _component("schemas", SCHEMAS, schema)}}}


def _success(doc: Operation) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": HTTPStatus(doc.status).phrase}
    if doc.media_type is not None:
        schema = (_component("schemas", SCHEMAS, doc.response) if doc.response else
                  {"type": "object"} if doc.media_type == "application/json" else
                  {"type": "string"})
        answer["content"] = {doc.media_type: {"schema": schema}}
    return answer


def _responses(route: Route, doc: Operation) -> dict[str, Any]:
    answers: dict[str, Any] = {str(doc.status): _success(doc)}
    if _approvable(doc):
        answers["202"] = _component("responses", RESPONSES, "approval_required")
    if doc.etag:
        answers["304"] = _component("responses", RESPONSES, "not_modified")
    for code, name in ERRORS.items():
        if _authenticated(route) or code not in TOKEN_ERRORS:
            answers[code] = _component("responses", RESPONSES, name)
    for status, description, schema in doc.extra:
        answers[str(status)] = {"description": description}
        if schema is not None:
            answers[str(status)]["content"] = {
                "application/json": {"schema": _component("schemas", SCHEMAS, schema)}}
    return dict(sorted(answers.items()))


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
