"""GET /ui/: the web dashboard, static files shipped in ``ferrohsm.api.dashboard``.

Why it is built this way:

- The files are read ONCE, at start-up, with importlib.resources, so the dashboard works the same
  from a source checkout, a wheel or the ``dist/ferrohsm`` zip app. The set of files read is the
  allow-list: a request path is looked up in a dict and never reaches the file system, so there is
  no traversal to get wrong (the router refuses ``..`` anyway).
- The page itself is public and holds no data: ``/ui/`` needs no token. The script sends the token
  (kept in sessionStorage) in the Authorization header of its ``/v1`` calls, fetched with
  ``cache: "no-store"``, so authenticated data never lands in the browser's HTTP cache, and the
  token never appears in a URL, a log line or a Referer.
- Every dashboard response carries a strict Content-Security-Policy (no inline script or style,
  same-origin connections only), ``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``.
- Caching without a build step: the index page is revalidated on every load (ETag, no-cache),
  and it names the scripts and style sheet under ``v/<digest of all files>/``. Files under that
  content-addressed folder never change, so they are cached as immutable; ES-module imports
  (``./lib.js``) resolve inside the same folder. A reload therefore costs one small request
  instead of seven, which matters because these unauthenticated requests spend the client IP's
  rate-limit tokens, and an upgraded server can never run a stale script.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from ...domain.errors import NotFound
from ...domain.model import RequestContext
from ..http import Request, Response
from ..router import Operation, Router
from .common import not_modified

PACKAGE = "ferrohsm.api.dashboard"
INDEX = "index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CSP),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
)
REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
TAGS = ("dashboard",)
_LOCAL_REF = re.compile(r'(src|href)="([A-Za-z0-9_-]+\.(?:js|css))"')


@dataclass(frozen=True, slots=True)
class Asset:
    """One static file, with its strong validator computed once."""

    body: bytes
    content_type: str
    etag: str

    @classmethod
    def of(cls, body: bytes, content_type: str) -> Asset:
        return cls(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


@dataclass(frozen=True, slots=True)
class Site:
    """The dashboard as served: files by name, their version folder and the pinned index."""

    files: dict[str, Asset]
    version: str
    index: Asset


def load_site(package: str = PACKAGE) -> Site:
    """Read every servable file of ``package`` and pin the index page to their version.

    Fails start-up when the index page is missing: a server that answers 404 on its own dashboard
    is a packaging bug that should surface at once, not when someone opens it.
    """
    files: dict[str, Asset] = {}
    for entry in resources.files(package).iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in CONTENT_TYPES:
            files[entry.name] = Asset.of(entry.read_bytes(), CONTENT_TYPES[suffix])
    if INDEX not in files:
        raise RuntimeError(f"{package} has no {INDEX}: the dashboard was not packaged")
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].body + b"\0")
    version = digest.hexdigest()[:16]

    def pin(match: re.Match[str]) -> str:
        attr, name = match.groups()
        return f'{attr}="v/{version}/{name}"' if name in files else match.group(0)
    html = _LOCAL_REF.sub(pin, files[INDEX].body.decode("utf-8"))
    return Site(files, version, Asset.of(html.encode("utf-8"), CONTENT_TYPES[".html"]))


def harden(resp: Response) -> Response:
    """Add the dashboard's security headers that ``resp`` does not set yet (idempotent).

    Exposed so the application can apply it to responses it makes before a handler runs
    (429, 405, 400 on a bad path) for paths under ``/ui``.
    """
    present = {name.lower() for name, _ in resp.headers}
    resp.headers.extend(h for h in SECURITY_HEADERS if h[0].lower() not in present)
    return resp


def _lookup(site: Site, path: str) -> tuple[Asset, str] | None:
    """The asset for a path under /ui/ and its Cache-Control, or None (404)."""
    if path in ("", INDEX):
        return site.index, REVALIDATE
    folder, _, name = path.rpartition("/")
    if folder == f"v/{site.version}" and name != INDEX and name in site.files:
        return site.files[name], IMMUTABLE
    if not folder and name in site.files:  # unversioned, for people and tools poking around
        return site.files[name], REVALIDATE
    return None


def register(router: Router, site: Site | None = None) -> None:
    """Route ``GET /ui/...`` to the static files and redirect ``/ui`` to ``/ui/``."""
    served = load_site() if site is None else site

    def serve(ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        found = _lookup(served, p["path"])
        if found is None:  # raised, so the application records it like any other 404
            raise NotFound("no such dashboard file")
        asset, cache_control = found
        headers = [("ETag", asset.etag), ("Cache-Control", cache_control)]
        if not_modified(req, asset.etag):
            return harden(Response(304, b"", headers))
        return harden(Response(200, asset.body, [("Content-Type", asset.content_type),
                                                 *headers]))

    def redirect(ctx: RequestContext, req: Request, p: dict[str, str]) -> Response:
        # Relative URLs in the index page resolve against /ui/, not against /.
        return harden(Response(308, b"", [("Location", "/ui/"), ("Cache-Control", REVALIDATE)]))

    router.add_prefix("GET", "/ui/", serve, name="dashboard", doc=Operation(
        "The web dashboard: its page, and its scripts and style sheet under /ui/", TAGS,
        media_type="text/html", etag=True, description="Public: the page holds no data and "
        "sends the token the user pastes with its own /v1 calls."))
    router.add("GET", "/ui", redirect, name="dashboardRedirect", doc=Operation(
        "Redirect to /ui/", TAGS, status=308, media_type=None))
