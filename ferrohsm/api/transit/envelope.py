"""Vault's response envelope and error shape, and the statuses Vault answers with.

Success: ``{"request_id", "lease_id": "", "renewable": false, "lease_duration": 0, "data": {...},
"wrap_info": null, "warnings": null | [...], "auth": null}``. Errors: ``{"errors": ["..."]}``.
Vault answers every user error 400 (FerroHSM's 409 and 410 included), a missing or bad token
403 "permission denied" (FerroHSM: 401), an unknown path 404 (a missing key: 404 when read,
400 in Vault's words elsewhere, api/handlers/transit.py ``_missing_key``), a method a path does
not take 405. A parked dual-control request (FerroHSM's 202) has no Vault equivalent that a Vault
client would not take for success, so it is a 400 naming the approval to redeem.
"""

from __future__ import annotations

from typing import Any

from ...domain.errors import (
    ApprovalRequired,
    FerroError,
    MethodNotAllowed,
    NoSuchCiphertextVersion,
    PayloadTooLarge,
)
from ..http import Response, json_response, public_message, retry_after
from ..parse import TOO_LARGE_HINT

# The native 413's way out names native members; a Vault client's are these.
TOO_LARGE_TRANSIT = ("; sign or verify large data by its hash (hash it locally and send "
                     "\"prehashed\": true) and encrypt large data locally under a data key "
                     "(datakey/wrapped)")

# FerroHSM status -> Vault status, where they differ
_STATUS = {401: 403, 409: 400, 410: 400, 202: 400}


def envelope(request_id: str, data: dict[str, Any] | None,
             warnings: list[str] | None = None) -> dict[str, Any]:
    return {"request_id": request_id, "lease_id": "", "renewable": False, "lease_duration": 0,
            "data": data, "wrap_info": None, "warnings": warnings or None, "auth": None}


def ok(request_id: str, data: dict[str, Any] | None, warnings: list[str] | None = None,
       status: int = 200) -> Response:
    return json_response(status, envelope(request_id, data, warnings))


def vault_status(exc: FerroError) -> int:
    return _STATUS.get(exc.status, exc.status)


def vault_message(exc: FerroError) -> str:
    """The error text: FerroHSM's message, with Vault's words where a Vault client looks for
    them ("permission denied")."""
    if exc.status in (401, 403):
        return f"permission denied: {exc.message}"
    if isinstance(exc, NoSuchCiphertextVersion):  # natively opaque; Vault names the version
        return f"key has no version {exc.details.get('version')}"
    if isinstance(exc, ApprovalRequired):  # the message names the approval to redeem
        return f"dual control: {exc.message}"
    if isinstance(exc, PayloadTooLarge):
        return exc.message.replace(TOO_LARGE_HINT, TOO_LARGE_TRANSIT)
    return public_message(exc)


def error(exc: FerroError) -> Response:
    """THE Vault-shaped error response of the transit surface (api/application.py calls it for
    every refusal under /v1/transit/, as it calls http.error_response elsewhere)."""
    headers = retry_after(exc)
    if isinstance(exc, MethodNotAllowed):
        headers.append(("Allow", ", ".join(exc.allow)))
    return json_response(vault_status(exc), {"errors": [vault_message(exc)]}, headers)
