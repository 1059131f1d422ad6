"""`ferrohsm version`, `ferrohsm status` and `ferrohsm whoami`: what an operator asks first.

``version`` always prints the client's version and, when a server is configured, the server's
(the public ``version`` of ``GET /healthz``). ``status`` is health, seal state and the server
certificate's expiry: from ``/healthz``'s ``tls.not_after`` when the server reports it, else from
the certificate the TLS connection presented. ``whoami`` is ``GET /v1/whoami``: the token as the
server reads it, which is what decides every refusal.
"""

from __future__ import annotations

import argparse
import ssl
from datetime import UTC, datetime
from typing import Any

from .. import __version__
from . import output
from .errors import FAILED, OK, USAGE
from .settings import (
    NoServer,
    Settings,
    UsageError,
    check_field,
    client_flags,
    command,
    output_only,
    resolve,
)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("version", parents=[client_flags()], allow_abbrev=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="print the client's version and the server's",
                       description="Print this client's version and, when a server is "
                       "configured (--server, FERROHSM_URL or a profile), the server's.",
                       epilog="examples:\n  ferrohsm version\n  ferrohsm version --json")
    p.set_defaults(func=run_version)
    command(sub, "status", status, help="server health, seal state and certificate expiry",
            description="Ask the server how it is: health (ok or degraded, with the reason "
            "for an Auditor or Administrator token), whether it is sealed, and when its TLS "
            "certificate expires. Of several servers (comma-separated), the first that answers "
            "is described and each listed before it that did not is named (unreachable). "
            "Exits 0 when healthy, 1 otherwise; with --json a server that cannot be reached "
            "is still a JSON answer (status unreachable).",
            epilog="examples:\n  ferrohsm status\n  ferrohsm status --field certificate.days_left")
    command(sub, "whoami", whoami, help="the token as the server sees it: subject, role, tags",
            description="Describe the token in use as the server reads it (GET /v1/whoami): "
            "subject, role, tag scope and expiry. Any role may ask; the call is audited.",
            epilog="examples:\n  ferrohsm whoami\n  ferrohsm whoami --field role")


def run_version(args: argparse.Namespace) -> int:
    """Client version always; the server's when one is configured (exit 1 if unreachable)."""
    from ..client import ClientError
    from .settings import make_client
    document: dict[str, Any] = {"client": __version__}
    code = OK
    check_field(args)
    try:
        settings = resolve(args)
    except NoServer:
        settings = None
    except UsageError as exc:  # a broken profile, a bad token file: said, not taken for none
        settings, code = None, USAGE
        document["server"], document["server_error"] = None, str(exc)
    if settings is not None:
        document["server_url"] = settings.server
        try:
            with make_client(settings) as client:
                client.retries = 0
                document["server"] = _health(client).get("version")
                document["server_url"] = client.url  # of a list, the node that answered
        except ClientError as exc:
            document["server"] = None
            document["server_error"] = exc.message
            code = FAILED
        except UsageError as exc:  # a malformed server URL: said, the client's version kept
            document["server"] = None
            document["server_error"] = str(exc)
            code = USAGE
    shown = settings or output_only(args)

    def human() -> str:
        lines = [f"client  ferrohsm {__version__}"]
        if "server_url" in document or "server_error" in document:
            server = document.get("server")
            lines.append(f"server  ferrohsm {server} at {document['server_url']}" if server
                         else f"server  unknown: {document.get('server_error')}")
        return "\n".join(lines)
    output.emit(shown, document, human)
    return code


def _health(client: Any) -> dict[str, Any]:
    """GET /healthz; a 503 (degraded) answers with the same body, which is what we want."""
    from ..client import ApiError
    try:
        return client.health()  # type: ignore[no-any-return]
    except ApiError as exc:
        if exc.status == 503 and exc.body:
            return dict(exc.body)
        raise


def status(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    from ..client import TransportError
    client.retries = 0  # a status check reports, it does not wait out a degraded server
    not_after: Any
    try:
        health = _health(client)
    except TransportError as exc:
        if exc.expired_at is not None:  # what status is for: said as such, exit 1
            health = {"status": "certificate_expired", "reason": exc.message,
                      "sealed": None}  # not reached: whether it is sealed is not known
            not_after, source = exc.expired_at, "tls"
        else:
            _unreachable(settings, client, exc)
            raise  # main() says why in one line and exits 1
    else:
        tls = health.get("tls") if isinstance(health.get("tls"), dict) else None
        not_after, source = (tls.get("not_after"), "healthz") if tls and tls.get("not_after") \
            else (_peer_not_after(client), "tls")
    cert: dict[str, Any] = {"not_after": not_after, "days_left": _days_left(not_after),
                            "source": source}
    document: dict[str, Any] = {
        "server": client.url, "status": health.get("status"),
        "version": health.get("version"), "sealed": _sealed(health),
        "reason": health.get("reason"), "certificate": cert,
        "unreachable": _skipped(client), "unseal": _unseal_progress(health)}

    def human() -> str:
        days = cert["days_left"]
        pairs = [("Server", client.url),
                 *(("Unreachable", n["error"] if n["server"] in n["error"]
                    else f"{n['server']}: {n['error']}") for n in document["unreachable"]),
                 ("Health", str(document["status"]) + (f": {document['reason']}"
                                                       if document["reason"] else "")),
                 ("Version", str(document["version"] or "-")),
                 ("Sealed", _sealed_text(document)),
                 ("Certificate", f"expires {output.when(cert['not_after'])}"
                  + (f" ({_time_left(cert['not_after'])})" if days is not None else ""))]
        return output.fields(pairs)
    output.emit(settings, document, human)
    return OK if document["status"] == "ok" else FAILED


def _unseal_progress(health: dict[str, Any]) -> dict[str, Any] | None:
    """A sealed split-knowledge server's /healthz says how many shares it has of how many it
    needs: {"progress", "threshold", "shares"}; None when it says nothing of it."""
    if "progress" not in health and "threshold" not in health:
        return None
    return {"progress": health.get("progress"), "threshold": health.get("threshold"),
            "shares": health.get("shares")}


def _sealed(health: dict[str, Any]) -> bool | None:
    """What /healthz said; None when the server was not reached (an expired certificate)."""
    sealed = health.get("sealed", False)
    return None if sealed is None else bool(sealed)


def _sealed_text(document: dict[str, Any]) -> str:
    if document["sealed"] is None:
        return "unknown (the server was not reached)"
    if not document["sealed"]:
        return "no"
    unseal = document.get("unseal")
    if not unseal:
        return "yes"
    return (f"yes: unseal progress {unseal['progress']}/{unseal['threshold']} shares "
            "(submit more with `ferrohsm unseal`)")


def _skipped(client: Any) -> list[dict[str, str]]:
    """The listed servers that did not answer, in the order of the list."""
    return [{"server": url, "error": client.unreachable[url]} for url in client.urls
            if url in client.unreachable]


def _unreachable(settings: Settings, client: Any, exc: Exception) -> None:
    """No server answered: with --json, --field or --output text the failure is still an
    answer a script can read (the table is left to the one line on stderr)."""
    if settings.output == "table" and not settings.field:
        return
    document = {"server": None, "status": "unreachable", "error": getattr(exc, "message", ""),
                "unreachable": _skipped(client)}
    output.emit(settings, document, lambda: "")


def _peer_not_after(client: Any) -> str | None:
    value = client.server_certificate().get("notAfter")
    if not value:
        return None
    seconds = ssl.cert_time_to_seconds(str(value))
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds_left(not_after: Any) -> float | None:
    parsed = output.parse_time(not_after) if isinstance(not_after, str) else None
    return None if parsed is None else (parsed - datetime.now(UTC)).total_seconds()


def _days_left(not_after: Any) -> int | None:
    """Whole days left, counted down to 0 on the last day; once expired, minus the whole days
    since (at least 1: a negative value always means expired)."""
    seconds = _seconds_left(not_after)
    if seconds is None:
        return None
    return int(seconds // 86400) if seconds >= 0 else -max(1, int(-seconds // 86400))


def _time_left(not_after: Any) -> str:
    """"N days left", "N hours left" on the last day, "expired N days ago" once expired."""
    seconds = _seconds_left(not_after) or 0.0
    if seconds < 0:
        days = int(-seconds // 86400)
        return "expired " + (f"{days} day{'s' * (days != 1)} ago" if days else "today")
    if seconds >= 86400:
        days = int(seconds // 86400)
        return f"{days} day{'s' * (days != 1)} left"
    hours = int(seconds // 3600)
    return f"{hours} hour{'s' * (hours != 1)} left" if hours else "less than an hour left"


def whoami(args: argparse.Namespace, client: Any, settings: Settings) -> int:
    me = client.whoami()

    def human() -> str:
        tags = me.get("tags")
        expires = me.get("expires_at")
        return output.fields([
            ("Subject", str(me.get("subject"))), ("Role", str(me.get("role"))),
            ("Tags", "any key (no tag scope)" if tags is None
             else (", ".join(tags) or "none: this token may use no key")),
            ("Expires", f"{output.when(expires)} ({output.relative(expires)})"
             if expires else "-"),
            ("Token id", str(me.get("jti") or "- (no jti: cannot be revoked by id)"))])
    output.emit(settings, me, human)
    return OK
