"""Key import (BYOK) routes: create an import job; import material as a new version of a key.

A new key from imported material is ``POST /v1/keys`` with an ``import`` member (handlers/keys.py
passes it to ``create_imported``), so a key named "import" stays reachable and creation keeps one
route.
"""

from __future__ import annotations

from typing import Any

from ...auth.permissions import Action
from ...domain.errors import BadRequest
from ...domain.model import RequestContext, key_view
from ...service.imports import ImportService
from ..http import Request
from ..router import Operation, Router
from .common import Field, Reply, b64, check_fields, fields

TAGS = ("keys",)
IMPORT_FIELDS = {"import_job_id": Field(str, True), "wrapping_algorithm": Field(str, True),
                 "wrapped_material": Field(str, True)}


def wrapped_of(body: dict[str, Any]) -> tuple[str, str, bytes]:
    """(import job id, wrapping algorithm, wrapped bytes) of an import body; 400 when
    malformed (the message names the field, never its value)."""
    wrapped = b64(body["wrapped_material"], "wrapped_material")
    if not wrapped:
        raise BadRequest("wrapped_material must not be empty")
    return body["import_job_id"], body["wrapping_algorithm"], wrapped


def create_imported(imports: ImportService, ctx: RequestContext, body: dict[str, Any],
                    tags: tuple[str, ...]) -> Reply:
    """``POST /v1/keys`` with an ``import`` member: a new key made from the wrapped material."""
    if not isinstance(body["import"], dict):
        raise BadRequest("field import has the wrong type")
    job_id, wrapping, wrapped = wrapped_of(check_fields(body["import"], IMPORT_FIELDS))
    key = imports.import_key(ctx, import_job_id=job_id, wrapping_algorithm=wrapping,
                             wrapped=wrapped, algorithm=body["algorithm"], usage=body["usage"],
                             name=body.get("name"), description=body.get("description", ""),
                             tags=tags)
    return 201, key_view(key)


def register(router: Router, imports: ImportService) -> None:
    def create_job(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        fields(req, {})
        return 201, imports.create_job(ctx)

    def import_version(ctx: RequestContext, req: Request, p: dict[str, str]) -> Reply:
        job_id, wrapping, wrapped = wrapped_of(fields(req, IMPORT_FIELDS))
        key = imports.import_version(ctx, p["key"], import_job_id=job_id,
                                     wrapping_algorithm=wrapping, wrapped=wrapped)
        return 200, key_view(key)

    router.add("POST", "/v1/import-jobs", create_job, name="createImportJob", doc=Operation(
        "Create an import job: an RSA-3072 wrapping key for one key import, valid 24 hours",
        TAGS, Action.IMPORT_JOB_CREATE, request="Empty", response="ImportJob", status=201))
    router.add("POST", "/v1/keys/{key}/import", import_version, name="importKeyVersion",
               doc=Operation("Import wrapped key material as a new primary version", TAGS,
                             Action.KEY_IMPORT, request="ImportMaterial", response="Key",
                             errors=(409, 410)))
