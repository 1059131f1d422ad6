"""The OpenAPI 3.1 description of the REST API, served at GET /v1/openapi.json.

Built from one table of operations so that tests can check it against the router both ways:
every routed path is documented and every documented path is routed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


B64 = {"type": "string", "contentEncoding": "base64"}
TOKEN = {"type": "string", "pattern": "^fhsm:v[1-9][0-9]*:[A-Za-z0-9+/=]+$"}
SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message", "request_id"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                       "request_id": {"type": "string"}}}}},
    "KeyVersion": {"type": "object", "properties": {
        "version": {"type": "integer"}, "state": {"enum": ["enabled", "archived", "destroyed"]},
        "created_at": {"type": "string", "format": "date-time"}}},
    "Key": {"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"}, "name": {"type": ["string", "null"]},
        "description": {"type": "string"},
        "algorithm": {"enum": ["aes-256-gcm", "rsa-2048", "rsa-4096", "ec-p256", "ec-p384"]},
        "usage": {"enum": ["encrypt", "wrap", "sign"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "state": {"enum": ["active", "revoked", "destroy_scheduled", "destroyed"]},
        "primary_version": {"type": "integer"},
        "versions": {"type": "array", "items": _ref("KeyVersion")},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "created_by": {"type": "string"},
        "destroy_after": {"type": ["string", "null"], "format": "date-time"},
        "history": {"type": "array", "items": {"type": "object"}}}},
    "KeyList": {"type": "object", "properties": {
        "keys": {"type": "array", "items": _ref("Key")}, "total": {"type": "integer"},
        "next_page_token": {"type": ["string", "null"]}}},
    "CreateKey": {"type": "object", "additionalProperties": False,
                  "required": ["algorithm", "usage"], "properties": {
                      "algorithm": {"type": "string"}, "usage": {"type": "string"},
                      "name": {"type": "string"}, "description": {"type": "string"},
                      "tags": {"type": "array", "items": {"type": "string"}}}},
    "UpdateKey": {"type": "object", "additionalProperties": False, "required": ["description"],
                  "properties": {"description": {"type": "string"}}},
    "Rollback": {"type": "object", "additionalProperties": False, "required": ["version"],
                 "properties": {"version": {"type": "integer"}}},
    "Revoke": {"type": "object", "additionalProperties": False,
               "properties": {"reason": {"type": "string"}}},
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
    "SignRequest": {"type": "object", "additionalProperties": False, "properties": {
        "message": B64, "digest": B64, "algorithm": {"enum": [
            "rsa-pss-sha256", "rsa-pkcs1v15-sha256", "ecdsa-sha256", "ecdsa-sha384"]}}},
    "SignResponse": {"type": "object", "properties": {
        "signature": B64, "key_version": {"type": "integer"}, "algorithm": {"type": "string"}}},
    "VerifyRequest": {"type": "object", "additionalProperties": False, "required": ["signature"],
                      "properties": {"message": B64, "digest": B64, "signature": B64,
                                     "algorithm": {"type": "string"},
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
        "status": {"enum": ["ok", "degraded"]}, "uptime_seconds": {"type": "number"}}},
    "AuditPage": {"type": "object", "properties": {
        "records": {"type": "array", "items": {"type": "object"}}, "head_seq": {"type": "integer"},
        "next_after_seq": {"type": ["integer", "null"]}}},
    "ApprovalVote": {"type": "object", "properties": {
        "actor": {"type": "string"}, "role": {"enum": ["administrator", "operator"]},
        "at": {"type": "string", "format": "date-time"}, "comment": {"type": "string"}}},
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
            "state": {"enum": ["pending", "approved", "denied", "expired", "executed"]},
            "expires_at": {"type": "string", "format": "date-time"},
            "requested_by": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "executed_at": {"type": ["string", "null"], "format": "date-time"},
            "summary": {"type": "string", "description": "non-secret view of the arguments"}}},
    "ApprovalList": {"type": "object", "properties": {
        "approvals": {"type": "array", "items": _ref("Approval")},
        "next_page_token": {"type": ["string", "null"]}}},
    "ApprovalRequired": {"type": "object", "required": ["error", "approval"], "properties": {
        "error": {"type": "object", "properties": {
            "code": {"const": "approval_required"}, "message": {"type": "string"},
            "request_id": {"type": "string"}}},
        "approval": _ref("Approval")}},
    "ApprovalVoteRequest": {"type": "object", "additionalProperties": False,
                            "properties": {"comment": {"type": "string", "maxLength": 256}}},
}

KEY = {"name": "key", "in": "path", "required": True, "description": "key id or unique name",
       "schema": {"type": "string"}}
LIST_QUERY = [{"name": n, "in": "query", "schema": {"type": "string"}}
              for n in ("state", "algorithm", "usage", "tag", "name_prefix", "page_token")] + [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}]

# (method, path, operationId, summary, request schema, success status, response schema)
OPERATIONS: list[tuple[str, str, str, str, str | None, int, str | None]] = [
    ("POST", "/v1/keys", "createKey", "Create a key", "CreateKey", 201, "Key"),
    ("GET", "/v1/keys", "listKeys", "List keys (filters, pagination, ETag)", None, 200, "KeyList"),
    ("GET", "/v1/keys/{key}", "getKey", "Describe a key", None, 200, "Key"),
    ("PATCH", "/v1/keys/{key}", "updateKey", "Change a key's description", "UpdateKey", 200, "Key"),
    ("POST", "/v1/keys/{key}/rotate", "rotateKey", "Add a new primary version", "Empty", 200,
     "Key"),
    ("POST", "/v1/keys/{key}/rollback", "rollbackKey", "Make an older version primary",
     "Rollback", 200, "Key"),
    ("POST", "/v1/keys/{key}/revoke", "revokeKey", "Revoke (process-only)", "Revoke", 200, "Key"),
    ("POST", "/v1/keys/{key}/destroy", "destroyKey", "Schedule destruction after a grace period",
     "Empty", 200, "Key"),
    ("POST", "/v1/keys/{key}/cancel-destroy", "cancelDestroyKey", "Cancel scheduled destruction",
     "Empty", 200, "Key"),
    ("GET", "/v1/keys/{key}/public-key", "getPublicKey", "Public key PEM (asymmetric keys)", None,
     200, "PublicKey"),
    ("POST", "/v1/keys/{key}/encrypt", "encrypt", "AES-256-GCM encrypt", "EncryptRequest", 200,
     "EncryptResponse"),
    ("POST", "/v1/keys/{key}/decrypt", "decrypt", "AES-256-GCM decrypt", "DecryptRequest", 200,
     "DecryptResponse"),
    ("POST", "/v1/keys/{key}/sign", "sign", "Sign a message or digest (DER)", "SignRequest", 200,
     "SignResponse"),
    ("POST", "/v1/keys/{key}/verify", "verify", "Verify a signature", "VerifyRequest", 200,
     "VerifyResponse"),
    ("POST", "/v1/keys/{key}/wrap", "wrap", "Wrap key material (RFC 5649)", "WrapRequest", 200,
     "WrapResponse"),
    ("POST", "/v1/keys/{key}/unwrap", "unwrap", "Unwrap key material", "UnwrapRequest", 200,
     "UnwrapResponse"),
    ("GET", "/v1/audit", "readAudit", "Audit records after a sequence number (verifiable JSONL "
     "records)", None, 200, "AuditPage"),
    ("GET", "/v1/approvals", "listApprovals", "Approvals, optionally by state (dual control)",
     None, 200, "ApprovalList"),
    ("GET", "/v1/approvals/{id}", "getApproval", "Describe an approval", None, 200, "Approval"),
    ("POST", "/v1/approvals/{id}/approve", "approveRequest",
     "Approve a parked request (Administrator/Operator, not the requester; once each)",
     "ApprovalVoteRequest", 200, "Approval"),
    ("POST", "/v1/approvals/{id}/deny", "denyRequest", "Refuse a parked request",
     "ApprovalVoteRequest", 200, "Approval"),
    ("GET", "/v1/openapi.json", "openapi", "This document", None, 200, None),
    ("GET", "/healthz", "health", "Liveness and counters (no authentication)", None, 200,
     "Health"),
    ("GET", "/metrics", "metrics", "Prometheus text exposition 0.0.4 (no authentication)", None,
     200, None),
]

# Operations a tag's approval_actions can put under dual control: they may answer 202 and accept
# X-Approval-ID on the repeat.
APPROVABLE = {"updateKey", "rotateKey", "rollbackKey", "revokeKey", "destroyKey",
              "cancelDestroyKey", "getPublicKey", "encrypt", "decrypt", "sign", "verify", "wrap",
              "unwrap"}
APPROVAL_HEADER = {"name": "X-Approval-ID", "in": "header", "required": False,
                   "description": "id of the approved request this call repeats",
                   "schema": {"type": "string"}}
APPROVAL_ID = {"name": "id", "in": "path", "required": True, "description": "approval id",
               "schema": {"type": "string"}}

ERRORS = {"400": "bad_request", "401": "unauthenticated", "403": "forbidden",
          "404": "not_found", "409": "conflict", "410": "gone", "413": "payload_too_large",
          "415": "unsupported_media_type", "429": "rate_limited", "503": "unavailable"}


def _operation(method: str, path: str, op_id: str, summary: str, request: str | None,
               status: int, response: str | None) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id, "summary": summary}
    params: list[dict[str, Any]] = [KEY] if "{key}" in path else []
    if "{id}" in path:
        params.append(APPROVAL_ID)
    if op_id in APPROVABLE:
        params.append(APPROVAL_HEADER)
    if op_id == "listApprovals":
        params += [{"name": "state", "in": "query", "schema": {"enum": [
            "pending", "approved", "denied", "expired", "executed"]}},
            {"name": "page_token", "in": "query", "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                        "maximum": 1000}}]
    if op_id == "listKeys":
        params += LIST_QUERY
    if op_id == "readAudit":
        params += [{"name": n, "in": "query", "schema": {"type": "integer", "minimum": 0}}
                   for n in ("after_seq", "limit")]
    if op_id == "getPublicKey":
        params.append({"name": "version", "in": "query", "schema": {"type": "integer"}})
    if params:
        op["parameters"] = params
    if request:
        optional = ("Empty", "Revoke", "ApprovalVoteRequest")
        op["requestBody"] = {"required": request not in optional, "content": {
            "application/json": {"schema": _ref(request)}}}
    content = {"application/json": {"schema": _ref(response)}} if response else {
        "text/plain" if op_id == "metrics" else "application/json": {"schema": {}}}
    op["responses"] = {str(status): {"description": "success", "content": content}}
    if op_id in APPROVABLE:
        op["responses"]["202"] = {
            "description": "approval_required: parked until a quorum approves (dual control)",
            "content": {"application/json": {"schema": _ref("ApprovalRequired")}}}
    for code, name in ERRORS.items():
        op["responses"][code] = {"description": name, "content": {
            "application/json": {"schema": _ref("Error")}}}
    if path.startswith("/v1/"):
        op["security"] = [{"bearer": []}]
    return op


def document(extra: Sequence[tuple[str, str, str, str, str | None, int, str | None]] = ()
             ) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for row in [*OPERATIONS, *extra]:
        paths.setdefault(row[1], {})[row[0].lower()] = _operation(*row)
    return {
        "openapi": "3.1.0",
        "info": {"title": "FerroHSM", "version": __version__,
                 "description": "Software HSM: sealed keys, cryptographic operations, audit."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    }
