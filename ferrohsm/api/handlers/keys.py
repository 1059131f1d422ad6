"""Key management routes: create, list, describe, update, rotate, rollback, revoke, destroy
(a key, or one version)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ...auth.permissions import Action
from ...domain.errors import BadRequest
from ...domain.model import KeyFilter, KeyState, RequestContext, key_view, plain_text
from ...service import KeyService
from ...service.imports import ImportService
from ...store.keystore import MAX_PAGE
from ..http import Request, Response, json_response
from ..router import Operation, Router
from .common import (
    MAX_VERSION,
    Field,
    Reply,
    fields,
    int_field,
    int_param,
    not_modified,
    query,
)
from .imports import create_imported

LIST_PARAMS = {"state", "algorithm", "usage", "tag", "name_prefix", "limit", "page_token"}
TAGS = ("keys",)
MAX_REASON = 256
# The key's state can refuse these: 409 (state, usage, version), 410 (destroyed).
STATEFUL = (409, 410)


def register(router: Router, service: KeyService, imports: ImportService | None = None) -> None:
    _register_inventory(router, service, imports)
    _register_lifecycle(router, service)


def _register_inventory(router: Router, service: KeyService,
                        imports: ImportService | None) -> None:
    """Create (generated, or with an ``import`` member: imported), list, describe, public key."""
    def create(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        body = fields(req, {"algorithm": Field(str, True), "usage": Field(str, True),
                            "name": Field(str), "description": Field(str), "tags": Field(list),
                            **({"import": Field(dict)} if imports else {})})
        tags = body.get("tags", [])
        if not all(isinstance(t, str) for t in tags):
            raise BadRequest("tags must be a list of strings", field="tags")
        if imports is not None and "import" in body:
            return create_imported(imports, ctx, body, tuple(tags))
        key = service.create_key(ctx, algorithm=body["algorithm"], usage=body["usage"],
                                 name=body.get("name"), description=body.get("description", ""),
                                 tags=tuple(tags))
        return 201, key_view(key)

    def listing(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        q = query(req, LIST_PARAMS)
        try:
            state = KeyState(q["state"]) if "state" in q else None
        except ValueError:
            raise BadRequest("unknown state filter: one of "
                             + ", ".join(s.value for s in KeyState)) from None
        filters = KeyFilter(state=state, algorithm=q.get("algorithm"), usage=q.get("usage"),
                            tag=q.get("tag"), name_prefix=q.get("name_prefix"))
        limit = int_param(q.get("limit"), "limit", 1, MAX_PAGE) or 100
        page, total = service.list_keys(ctx, filters, limit, q.get("page_token"))
        payload: dict[str, Any] = {"keys": [key_view(k) for k in page.keys],
                                   "next_page_token": page.next_page_token}
        if total is not None:
            payload["total"] = total
            if page.unreadable:  # keys whose stored records failed their check (docs/api.md)
                payload["unreadable"] = list(page.unreadable)
        return etagged(req, payload)

    def show(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        return 200, key_view(service.get_key(ctx, p["key"]))

    def public_key(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        q = query(req, {"version"})
        version = int_param(q.get("version"), "version", 1, MAX_VERSION)
        return 200, service.public_key(ctx, p["key"], version)

    router.add("POST", "/v1/keys", create, name="createKey", doc=Operation(
        "Create a key (generated, or imported: BYOK)", TAGS, Action.KEY_CREATE,
        request="CreateKey", response="Key", status=201, errors=(409, 410),
        extra=((404, "not_found: no such import job (used, purged or never made)", "Error"),)))
    router.add("GET", "/v1/keys", listing, name="listKeys", doc=Operation(
        "List keys (filters, pagination, ETag)", TAGS, Action.KEY_LIST, response="KeyList",
        query=("keyState", "algorithm", "usage", "tag", "namePrefix", "limit", "pageToken"),
        etag=True))
    router.add("GET", "/v1/keys/{key}", show, name="getKey", doc=Operation(
        "Describe a key", TAGS, Action.KEY_READ, response="Key"))
    router.add("GET", "/v1/keys/{key}/public-key", public_key, name="getPublicKey", doc=Operation(
        "Public key PEM (asymmetric keys)", TAGS, Action.KEY_PUBLIC, response="PublicKey",
        query=("version",), errors=STATEFUL))


def _register_lifecycle(router: Router, service: KeyService) -> None:
    """Update, rotate, rollback, revoke, destroy, cancel-destroy: each answers the key."""
    def update(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        body = fields(req, {"description": Field(str, True)})
        return 200, key_view(service.update_key(ctx, p["key"], body["description"]))

    def rotate(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        fields(req, {})
        return 200, key_view(service.rotate(ctx, p["key"]))

    def rollback(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        body = fields(req, {"version": Field(int, True)})
        version = int_field(body["version"], "version", 1, MAX_VERSION) or 1
        return 200, key_view(service.rollback(ctx, p["key"], version))

    def revoke(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        body = fields(req, {"reason": Field(str)})
        reason = plain_text(body.get("reason", ""), "reason", MAX_REASON)
        return 200, key_view(service.revoke(ctx, p["key"], reason))

    def destroy(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        fields(req, {})
        return 200, key_view(service.schedule_destroy(ctx, p["key"]))

    def cancel(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        fields(req, {})
        return 200, key_view(service.cancel_destroy(ctx, p["key"]))

    def destroy_version(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        fields(req, {})
        version = int_param(p["n"], "version", 1, MAX_VERSION) or 1
        return 200, key_view(service.destroy_version(ctx, p["key"], version))

    # (method, path suffix, handler, operation id, OpenAPI summary, action, request schema)
    for method, suffix, handler, name, summary, action, request in (
            ("PATCH", "", update, "updateKey", "Change a key's description",
             Action.KEY_UPDATE, "UpdateKey"),
            ("POST", "/rotate", rotate, "rotateKey", "Add a new primary version",
             Action.KEY_ROTATE, "Empty"),
            ("POST", "/rollback", rollback, "rollbackKey", "Make an older version primary",
             Action.KEY_ROLLBACK, "Rollback"),
            ("POST", "/revoke", revoke, "revokeKey", "Revoke (process-only)",
             Action.KEY_REVOKE, "Revoke"),
            ("POST", "/destroy", destroy, "destroyKey",
             "Schedule destruction after a grace period", Action.KEY_DESTROY, "Empty"),
            ("POST", "/cancel-destroy", cancel, "cancelDestroyKey",
             "Cancel scheduled destruction", Action.KEY_CANCEL_DESTROY, "Empty")):
        router.add(method, f"/v1/keys/{{key}}{suffix}", handler, name=name, doc=Operation(
            summary, TAGS, action, request=request, response="Key", errors=STATEFUL))
    router.add("POST", "/v1/keys/{key}/versions/{n}/destroy", destroy_version,
               name="destroyKeyVersion", doc=Operation(
                   "Erase one non-primary version's material now (Administrator)", TAGS,
                   Action.KEY_DESTROY_VERSION, request="Empty", response="Key",
                   errors=STATEFUL))


def etagged(req: Request, payload: dict[str, Any]) -> Response:
    """A strong ETag over the exact bytes; If-None-Match with it answers 304 and no body."""
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    tag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = [("ETag", tag), ("Cache-Control", "no-store")]
    if not_modified(req, tag):
        return Response(304, b"", headers)
    return json_response(200, payload, headers)
