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

PREFIX = "/v1/transit/"  # Vault's default mount path of the transit engine


def is_transit(path: str) -> bool:
    """Whether a raw request path belongs to the Vault-compatible surface."""
    return path.startswith(PREFIX)
