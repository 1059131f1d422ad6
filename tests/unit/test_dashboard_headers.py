"""The dashboard's static side, without a browser: headers, caching, routing, and guardrails
that keep the shipped files compatible with the strict Content-Security-Policy and free of HTML
injection sinks."""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from ferrohsm.api.application import Application
from ferrohsm.api.handlers import dashboard
from ferrohsm.api.http import Headers, Request, Response
from ferrohsm.api.router import Router
from ferrohsm.auth.ratelimit import Limit, RateLimiter, RateLimitPolicy
from ferrohsm.telemetry.metrics import ServerMetrics

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SITE = dashboard.load_site()
FILES = {entry.name: entry.read_text("utf-8")
         for entry in resources.files(dashboard.PACKAGE).iterdir()
         if entry.name.endswith((".html", ".js", ".css"))}


class NoAuth:
    """The dashboard must never ask for a token: any call here fails the test."""

    def authenticate(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the dashboard route asked for authentication")


GENEROUS = Limit(1000.0, 1000)


def make_app(per_ip: Limit = GENEROUS) -> Application:
    router = Router()
    dashboard.register(router, SITE)
    return Application(router, NoAuth(), ServerMetrics(),  # type: ignore[arg-type]  # NoAuth: a stand-in authenticator
                       lambda *a: None, RateLimiter(RateLimitPolicy(per_ip=per_ip)))


def get(app: Application, target: str, method: str = "GET", **headers: str) -> Response:
    path = target.split("?", 1)[0]
    return app(Request(method, target, path, {}, Headers(headers.items()), b"", "127.0.0.1",
                       40000, None, "req-1", time.monotonic()))


def header(resp: Response, name: str) -> str | None:
    values = [v for n, v in resp.headers if n.lower() == name.lower()]
    assert len(values) <= 1, f"{name} sent {len(values)} times"
    return values[0] if values else None


def assert_hardened(resp: Response) -> None:
    assert header(resp, "Content-Security-Policy") == CSP
    assert header(resp, "X-Frame-Options") == "DENY"
    assert header(resp, "Referrer-Policy") == "no-referrer"
    assert header(resp, "X-Content-Type-Options") == "nosniff"


# ---- serving ------------------------------------------------------------------------------

def test_index_needs_no_token_and_carries_the_security_headers() -> None:
    resp = get(make_app(), "/ui/")
    assert resp.status == 200
    assert header(resp, "Content-Type") == "text/html; charset=utf-8"
    assert header(resp, "Cache-Control") == "no-cache"
    assert_hardened(resp)
    assert b"<title>FerroHSM</title>" in resp.body
    assert get(make_app(), "/ui/index.html").body == resp.body


def test_index_revalidates_with_its_etag() -> None:
    app = make_app()
    etag = header(get(app, "/ui/"), "ETag")
    assert etag and re.fullmatch(r'"[0-9a-f]{32}"', etag)
    for value in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        resp = get(app, "/ui/", **{"If-None-Match": value})
        assert resp.status == 304 and resp.body == b"" and header(resp, "ETag") == etag
        assert_hardened(resp)
    assert get(app, "/ui/", **{"If-None-Match": '"stale"'}).status == 200


def test_index_names_scripts_and_styles_in_the_versioned_folder() -> None:
    html = SITE.index.body.decode()
    assert f'src="v/{SITE.version}/app.js"' in html
    assert f'href="v/{SITE.version}/style.css"' in html
    assert 'src="app.js"' not in html


@pytest.mark.parametrize("name, ctype", [("app.js", "text/javascript; charset=utf-8"),
                                         ("lib.js", "text/javascript; charset=utf-8"),
                                         ("style.css", "text/css; charset=utf-8")])
def test_versioned_assets_are_immutable(name: str, ctype: str) -> None:
    resp = get(make_app(), f"/ui/v/{SITE.version}/{name}")
    assert resp.status == 200 and header(resp, "Content-Type") == ctype
    assert header(resp, "Cache-Control") == "public, max-age=31536000, immutable"
    assert resp.body == FILES[name].encode()
    assert_hardened(resp)
    unversioned = get(make_app(), f"/ui/{name}")
    assert unversioned.status == 200 and header(unversioned, "Cache-Control") == "no-cache"


def test_version_changes_with_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "fhsm_dashboard_fixture"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "index.html").write_text('<link href="x.css"><script src="y.js"></script>')
    (package / "x.css").write_text("a {}")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = dashboard.load_site("fhsm_dashboard_fixture")
    assert first.index.body.decode() == (f'<link href="v/{first.version}/x.css">'
                                         '<script src="y.js"></script>')  # y.js is not shipped
    (package / "x.css").write_text("a { color: red }")
    assert dashboard.load_site("fhsm_dashboard_fixture").version != first.version


@pytest.mark.parametrize("target", ["/ui/nope.js", f"/ui/v/{'0' * 16}/app.js",
                                    f"/ui/v/{SITE.version}/index.html", "/ui/v/app.js",
                                    "/ui/__init__.py", "/ui/dashboard.py"])
def test_unknown_files_are_404_with_headers(target: str) -> None:
    resp = get(make_app(), target)
    assert resp.status == 404 and b'"not_found"' in resp.body
    assert_hardened(resp)


@pytest.mark.parametrize("target", ["/ui/../app.py", "/ui/%2e%2e/app.py", "/ui/a//b.js",
                                    "/ui/./app.js", "/ui/%00.js"])
def test_traversal_is_refused(target: str) -> None:
    assert get(make_app(), target).status == 400


def test_ui_without_slash_redirects() -> None:
    resp = get(make_app(), "/ui")
    assert resp.status == 308 and header(resp, "Location") == "/ui/"
    assert_hardened(resp)


def test_the_dashboard_files_are_free_and_its_misses_rate_limited_per_ip() -> None:
    app = make_app(per_ip=Limit(0.01, 3))
    assert [get(app, "/ui/").status for _ in range(10)] == [200] * 10
    assert [get(app, "/ui/nope.js").status for _ in range(4)] == [404, 404, 404, 429]


def test_refusals_made_before_the_handler_are_hardened_too() -> None:
    app = make_app(per_ip=Limit(0.01, 1))
    get(app, "/ui/nope.js")
    resp = get(app, "/ui/nope.js")
    assert resp.status == 429
    assert_hardened(resp)  # 429 from the limiter
    assert_hardened(make_app()(Request("POST", "/ui/", "/ui/", {}, Headers(), b"", "127.0.0.1",
                                       1, None, "r", time.monotonic())))  # 405


def test_missing_index_stops_start_up() -> None:
    with pytest.raises(RuntimeError, match=r"index\.html"):
        dashboard.load_site("ferrohsm.api.handlers")


# ---- guardrails on the shipped files -------------------------------------------------------

class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script":
            src = dict(attrs).get("src")
            if not src:
                self.problems.append("inline <script>")
            else:
                self.scripts.append(src)
        if tag == "style":
            self.problems.append("inline <style>")
        self.problems += [f"{name}= on <{tag}>" for name in names
                          if name.startswith("on") or name == "style"]
        for name, value in attrs:
            if name in ("src", "href") and value and re.match(r"[a-z]+:", value) \
                    and value != "data:,":
                self.problems.append(f"external or scheme URL {value!r} on <{tag}>")


def test_index_has_no_inline_script_style_or_handlers() -> None:
    markup = _Markup()
    markup.feed(FILES["index.html"])
    assert markup.problems == []
    assert markup.scripts == ["app.js"]


@pytest.mark.parametrize("name", sorted(n for n in FILES if n.endswith(".js")))
def test_scripts_have_no_html_injection_sinks(name: str) -> None:
    # Comments may name a sink to explain why it is not used; code may not.
    source = re.sub(r"(^|\s)//[^\n]*", r"\1", FILES[name], flags=re.MULTILINE)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setTimeout(\"", "srcdoc", "javascript:", "localStorage"):
        assert sink not in source, f"{name} uses {sink}"
    assert not re.search(r"https?://", source), f"{name} names an external URL"


def test_every_imported_module_is_shipped() -> None:
    for name, source in FILES.items():
        for imported in re.findall(r'from "\./([^"]+)"', source):
            assert imported in FILES, f"{name} imports {imported}, which is not shipped"


def test_styles_load_nothing_from_outside() -> None:
    css = FILES["style.css"]
    assert "@import" not in css and not re.search(r"url\(\s*['\"]?(https?:|//)", css)
