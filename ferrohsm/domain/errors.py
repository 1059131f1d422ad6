"""Domain errors.

Each class carries the API error ``code`` and HTTP ``status`` it maps to, so the HTTP layer maps
errors to responses in exactly one place and never by matching message text. Messages are shown
to clients: they must never contain key material, plaintext, tokens or other secrets.
"""

from __future__ import annotations


class FerroError(Exception):
    """Base of every error FerroHSM raises on purpose."""

    code = "internal"
    status = 500
    # Set once the refusal this error stands for has its audit record, so the HTTP layer (which
    # audits every refused call that nothing below it recorded) never records it twice.
    audited = False

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code.replace("_", " ")
        self.details = details


class BadRequest(FerroError):
    code, status = "bad_request", 400


class CryptoFailure(BadRequest):
    """One opaque error for every failed decrypt/unwrap (wrong AAD, tampering, wrong key).

    Like Fernet's InvalidToken, it deliberately says nothing about *why*, so callers cannot use it
    as an oracle.
    """


class Unauthenticated(FerroError):
    code, status = "unauthenticated", 401


class Forbidden(FerroError):
    code, status = "forbidden", 403


class NotFound(FerroError):
    code, status = "not_found", 404


class MethodNotAllowed(FerroError):
    code, status = "method_not_allowed", 405

    def __init__(self, message: str = "", allow: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allow = allow


class RequestTimeout(FerroError):
    """The request head or body did not arrive before its deadline (slow or stalled client)."""

    code, status = "request_timeout", 408


class UriTooLong(FerroError):
    code, status = "uri_too_long", 414


class ExpectationFailed(FerroError):
    """An ``Expect`` value other than ``100-continue``."""

    code, status = "expectation_failed", 417


class HeaderFieldsTooLarge(FerroError):
    code, status = "request_header_fields_too_large", 431


class VersionNotSupported(FerroError):
    code, status = "http_version_not_supported", 505


class Conflict(FerroError):
    """Wrong key state, usage or algorithm for the requested operation."""

    code, status = "conflict", 409


class InvalidTransition(Conflict):
    """A lifecycle move that the state table does not allow; nothing was changed."""


class StaleRevision(Conflict):
    """Optimistic concurrency: somebody else changed the record first; re-read and retry."""


class NameTaken(Conflict):
    """Key names are unique."""


class Gone(FerroError):
    """The key (or key version) was destroyed: its material no longer exists."""

    code, status = "gone", 410


class PayloadTooLarge(FerroError):
    code, status = "payload_too_large", 413


class UnsupportedMediaType(FerroError):
    code, status = "unsupported_media_type", 415


class RateLimited(FerroError):
    code, status = "rate_limited", 429

    def __init__(self, message: str = "", retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ApprovalRequired(FerroError):
    """Not an error for the client: the request was parked until a quorum approves it."""

    code, status = "approval_required", 202


class Unavailable(FerroError):
    """A dependency the operation needs (audit log, store) cannot be used: fail closed."""

    code, status = "unavailable", 503


class AuditUnavailable(Unavailable):
    """The audit record could not be made durable, so the operation was refused."""


class StoreError(Unavailable):
    """The key store could not read or write (I/O error, corrupted file, lock held)."""


class IntegrityError(FerroError):
    """A key's stored record failed its MAC (edited, MAC stripped or copied, another key's record),
    or its sealed material failed its integrity check (tampered, truncated, moved, wrong master
    key). That key is refused until an operator restores it; every other key is served.

    500, for both: the server's own storage is wrong, not the request (so not 4xx), and retrying
    cannot help (so not 503, which tells clients and load balancers to come back later). One code
    for both checks lets clients and alerts treat "this key cannot be trusted" one way. The message
    names the key (and version, or what failed) but never the bytes or the record's contents.
    """

    code, status = "integrity_error", 500


class ConfigError(FerroError):
    """A bad setting; start-up stops with a message naming the setting and where it came from."""

    code, status = "config_error", 500
