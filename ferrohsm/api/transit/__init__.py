"""The Vault-transit-compatible surface under ``/v1/transit/``: request and response mapping.

FerroHSM answers the requests of clients written for HashiCorp Vault's transit engine (hvac,
Vault's Go API client, SOPS) for what it can honestly do, through the same service calls as the
native API: same token validation, roles, tag scoping, rate limits, dual control and audit. This
package only translates: Vault's envelope and error shape (``envelope``), Vault's weakly typed
request bodies (``body``), key types and key info (``keyinfo``), and the ``vault:v<N>:`` text of
ciphertexts and signatures (``text``). The routes are in api/handlers/transit.py; README.md's
"Vault transit compatibility" section lists what is and is not supported.
"""

from __future__ import annotations

from collections.abc import Callable

from ...domain.errors import BadRequest

PREFIX = "/v1/transit/"  # Vault's default mount path of the transit engine
# Only Vault clients call these: FerroHSM's own API has nothing under /v1/auth/, and under
# /v1/sys/ only a few routes of its own (seal, unseal, rekey, backup), which keep its shapes
AUTH_PREFIX, SYS_PREFIX = "/v1/auth/", "/v1/sys/"


def is_vault(path: str) -> bool:
    """Whether a raw request path belongs to the Vault-compatible surface: Vault's shapes and
    the token in X-Vault-Token (the transit engine, and auth/token/lookup-self)."""
    return path.startswith((PREFIX, AUTH_PREFIX))


def is_vault_unrouted(path: str) -> bool:
    """Whether a path no route serves is answered in Vault's 404 shape: it is on the Vault
    surface, or under /v1/sys/ where only Vault clients look for what FerroHSM lacks (hvac's
    sys.read_health_status, ``vault status``)."""
    return is_vault(path) or path.startswith(SYS_PREFIX)


def refuse_unsupported_headers(header: Callable[[str], str | None]) -> None:
    """Vault headers that change what a request means, and that FerroHSM cannot honour: 400,
    not a silently different answer. Ignored, ``X-Vault-Wrap-TTL`` returned a data key in
    clear where the client asked for a wrapping token (hvac's ``wrap_info`` was null), and
    ``X-Vault-Namespace`` used the root namespace's key of that name (an outside tester)."""
    if header("x-vault-wrap-ttl") is not None:
        raise BadRequest("response wrapping (X-Vault-Wrap-TTL) is not supported by FerroHSM: "
                         "the answer would come back unwrapped")
    namespace = header("x-vault-namespace")
    if namespace is not None and namespace.strip().strip("/") not in ("", "root"):
        raise BadRequest("namespaces (X-Vault-Namespace) are not supported by FerroHSM: its "
                         "keys live in one root namespace")
