"""Domain errors.

Each class carries the API error ``code`` and HTTP ``status`` it maps to, so the HTTP layer maps
errors to responses in exactly one place and never by matching message text, and the ``outcome``
an audit record of the refusal states. Messages are shown to clients: they must never contain key
material, plaintext, tokens or other secrets.

``recorded(exc)`` marks a refusal whose audit record exists (see ``Recorded``).
"""

from __future__ import annotations

from typing import TypeVar, cast


class FerroError(Exception):
    """Base of every error FerroHSM raises on purpose."""

    code = "internal"
    status = 500
    outcome = "error"  # of the audit record of a refusal: "denied" (not allowed) or "error"

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code.replace("_", " ")
        self.details = details


class Recorded(Exception):
    """A refusal that already has its audit record.

    Every refusal is recorded exactly once, by the layer that decided it: the service's guarded
    call for the operations it runs, the HTTP layer for requests that never reached the service.
    The layer that recorded one raises it as ``recorded(exc)``, so the layers above tell by type,
    never by a flag someone must remember to set, that there is nothing left to record.
    """


E = TypeVar("E", bound=FerroError)


_RECORDED: dict[type[FerroError], type[FerroError]] = {}


def _recorded_class(cls: type[FerroError]) -> type[FerroError]:
    """The subclass of ``cls`` and Recorded, made once per class (same name, so messages and
    logs read as before)."""
    marked = _RECORDED.get(cls)
    if marked is None:
        names = {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                 "__doc__": cls.__doc__}
        marked = _RECORDED.setdefault(cls, type(cls.__name__, (cls, Recorded), names))
    return marked


def recorded(exc: E) -> E:
    """``exc`` as an instance of both its own class and ``Recorded``: a copy with the same
    message, details and traceback, so callers catching NotFound or Forbidden still catch it."""
    if isinstance(exc, Recorded):
        return exc
    cls = _recorded_class(type(exc))
    marked = cls.__new__(cls, *exc.args)
    marked.__dict__.update(exc.__dict__)
    return cast(E, marked.with_traceback(exc.__traceback__))


class BadRequest(FerroError):
    code, status = "bad_request", 400


class CryptoFailure(BadRequest):
    """One opaque error for every failed decrypt/unwrap (wrong AAD, tampering, wrong key).

    Like Fernet's InvalidToken, it deliberately says nothing about *why*, so callers cannot use it
    as an oracle.
    """


class NoSuchCiphertextVersion(CryptoFailure):
    """A ciphertext naming a version its key never had. Natively the same opaque 400 as any
    other token that is not the key's; the Vault surface names the version (``version`` in
    ``details``), as Vault does and as its verify does for a signature."""


class Unauthenticated(FerroError):
    code, status, outcome = "unauthenticated", 401, "denied"


class Forbidden(FerroError):
    code, status, outcome = "forbidden", 403, "denied"


class NotFound(FerroError):
    code, status = "not_found", 404


class MethodNotAllowed(FerroError):
    code, status = "method_not_allowed", 405

    def __init__(self, message: str = "", allow: tuple[str, ...] = (),
                 route: str | None = None) -> None:
        super().__init__(message)
        self.allow = allow
        self.route = route  # the template the path matched (for logs, metrics and spans)


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


CAS_RETRIES = 8  # how often a compare-and-swap loop re-reads and retries before StaleRevision


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
    code, status, outcome = "rate_limited", 429, "denied"

    def __init__(self, message: str = "", retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ApprovalRequired(FerroError):
    """Not an error for the client: the request was parked until a quorum approves it."""

    code, status, outcome = "approval_required", 202, "denied"


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
