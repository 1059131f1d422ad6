"""A small hand-written router: templates like ``/v1/keys/{key}/encrypt`` in a segment trie.

Policies (each one is tested in tests/unit/test_router.py):

- Paths are matched raw, segment by segment; literal segments are compared WITHOUT decoding
  (``/v1/%6Beys`` is not ``/v1/keys``), and only path parameters are percent-decoded, exactly once.
  Nothing upstream may decode the path, or ``%252F`` would become ``/`` after two decodings.
- A parameter is refused with 400 when its encoding is invalid (bad ``%``, not UTF-8) or its
  decoded value is empty, longer than 256 characters, ``.``, contains ``..`` or ``/`` (also as
  ``%2F``), or contains a control character (NUL included).
- Trailing slash: ``/v1/keys/`` is not ``/v1/keys``: 404. The only exception is a prefix route
  (``add_prefix("GET", "/ui/", ...)``), which serves everything under its prefix and passes the
  decoded remainder as the ``path`` parameter (``/ui`` without the slash is 404).
- Literal segments win over parameters (``/v1/keys/search`` before ``/v1/keys/{key}``); when the
  literal branch has no route for the path, parameters are tried.
- 404 when no template matches the path, 405 (``MethodNotAllowed.allow`` sorted) when one does but
  not for this method. HEAD is served by the GET route (the server drops the body) unless a HEAD
  route exists; ``Allow`` therefore lists HEAD wherever GET is listed.

A route's declaration is also its entry in the API description: ``add(..., doc=Operation(...))``
carries the OpenAPI facts, and api/openapi.py builds ``/v1/openapi.json`` from ``routes()`` alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

from ..domain.errors import BadRequest, MethodNotAllowed, NotFound

Handler = Callable[..., Any]
MAX_PARAM_LENGTH = 256
MAX_PREFIX_PATH = 1024
_PARAM_TEMPLATE_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LITERAL_RE = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@]+")
_METHOD_RE = re.compile(r"[A-Z]{1,20}")
_BAD_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class Operation:
    """What the API description says of one route (the route's ``name`` is its operationId).

    Schema and parameter names refer to the shared components of api/openapi.py; an unknown
    name fails the document's build (and its tests), not a request."""

    summary: str
    tags: tuple[str, ...]
    # The permissions Action (auth/permissions.py) the call is authorized and audited as, None
    # for public routes; an approvable action (control/policy.py) may answer 202.
    action: str | None = None
    request: str | None = None           # schema of the JSON body; None: the route takes none
    response: str | None = None          # schema of the success body; None: any JSON
    status: int = 200                    # success status
    media_type: str | None = "application/json"  # of the success body; None: no body
    query: tuple[str, ...] = ()          # query parameters
    etag: bool = False                   # answers If-None-Match with 304
    # Error statuses this route answers besides those api/openapi.py derives from its shape
    # (400, 401/403 behind a token, 404 with path parameters, 413/415 with a body, 429, 5xx):
    # 409 and 410 when the key's or approval's state can refuse the call.
    errors: tuple[int, ...] = ()
    # Further answers besides the errors every route may give: (status, description, schema).
    extra: tuple[tuple[int, str, str | None], ...] = ()
    description: str = ""
    optional_auth: bool = False  # a public route that tells a bearer token's holder more


@dataclass(frozen=True, slots=True)
class Route:
    """One registered route. ``template`` is the prefix itself for prefix routes."""

    method: str
    template: str
    handler: Handler
    name: str | None = None
    params: tuple[str, ...] = ()
    is_prefix: bool = False
    # True for handlers that never block for long and never change state (crypto operations,
    # health): the server may run them on its event loop with their audit records deferred to
    # the loop's group commit. Everything else runs on the worker pool (api/server.py).
    inline: bool = False
    doc: Operation | None = None  # the route's OpenAPI entry (None: undocumented)
    # For an inline route: the requests that run on the worker pool all the same (a batch of
    # many items, which would hold the event loop too long); called with the Request.
    offload: Handler | None = None


@dataclass(slots=True)
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    routes: dict[str, Route] = field(default_factory=dict)


class Router:
    """Route table: ``add``/``add_prefix`` at start-up, ``match`` per request (read-only then)."""

    def __init__(self) -> None:
        self._root = _Node()
        self._prefixes: list[Route] = []
        self._prefix_templates: tuple[str, ...] = ()  # for one str.startswith per request
        self._routes: list[Route] = []

    def add(self, method: str, template: str, handler: Handler, *,
            name: str | None = None, inline: bool = False,
            doc: Operation | None = None, offload: Handler | None = None) -> Route:
        """Register ``handler`` for ``method`` on ``template``; ValueError on a bad or
        duplicate template (a typo must stop start-up, not produce a 404 later)."""
        _check_method(method)
        segments, params = _compile(template)
        node = self._root
        for segment in segments:
            if segment is None:
                node.param = node.param or _Node()
                node = node.param
            else:
                node = node.literals.setdefault(segment, _Node())
        if method in node.routes:
            raise ValueError(f"duplicate route {method} {template}")
        route = Route(method, template, handler, name, params, inline=inline, doc=doc,
                      offload=offload)
        node.routes[method] = route
        self._routes.append(route)
        return route

    def add_prefix(self, method: str, prefix: str, handler: Handler, *,
                   name: str | None = None, doc: Operation | None = None) -> Route:
        """Serve every path under ``prefix`` (which must end with '/'); param ``path`` holds
        the decoded remainder, "" for the prefix itself."""
        _check_method(method)
        if not (prefix.startswith("/") and prefix.endswith("/")):
            raise ValueError("a prefix must start and end with '/'")
        if any(r.template == prefix and r.method == method for r in self._prefixes):
            raise ValueError(f"duplicate prefix route {method} {prefix}")
        route = Route(method, prefix, handler, name, ("path",), is_prefix=True, doc=doc)
        self._prefixes.append(route)
        self._prefix_templates = tuple(r.template for r in self._prefixes)
        self._routes.append(route)
        return route

    def routes(self) -> list[Route]:
        """Every route in registration order (api/openapi.py documents them from this)."""
        return list(self._routes)

    def match(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
        """The route and decoded parameters for a raw path; NotFound, MethodNotAllowed or
        BadRequest (invalid parameter) otherwise."""
        if not raw_path.startswith(self._prefix_templates) and (
                raw_path == "/" or not raw_path.endswith("/")):
            found = self._first_path(method, raw_path)
            if found is not None:
                return found
        return self._match_any(method, raw_path)

    def _first_path(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]] | None:
        """The common case, without generators: follow the literal child where there is one,
        else the parameter child. That is the first path the depth-first walk of
        ``_candidates`` reaches, so when it ends at a route for ``method`` that route is the
        answer; None (a dead end, another method) leaves the decision to ``_match_any``. Only
        for paths no prefix route serves and without a trailing slash."""
        node = self._root
        values: list[str] = []
        for segment in raw_path.split("/")[1:]:
            child = node.literals.get(segment)
            if child is None:
                child = node.param
                if child is None:
                    return None
                values.append(segment)
            node = child
        routes = node.routes
        route = routes.get(method)
        if route is None and method == "HEAD":
            route = routes.get("GET")
        if route is None:
            return None
        return route, _decode(route.params, values)

    def _match_any(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
        """Every candidate in order (prefix routes, then the trie depth-first), then 405/404."""
        for route_map, params in self._candidates(raw_path):
            route = route_map.get(method)
            if route is None and method == "HEAD":
                route = route_map.get("GET")
            if route is not None:
                return route, params if route.is_prefix else _decode(route.params, params)
        allowed, template = self._allowed(raw_path)
        if not allowed:
            raise NotFound("no such endpoint")
        raise MethodNotAllowed(f"method {method} not allowed here", allow=allowed,
                               route=template)

    def _candidates(self, raw_path: str) -> Iterator[tuple[dict[str, Route], Any]]:
        """Route maps whose path matches, best first: prefix routes, then the trie."""
        prefix_maps: dict[str, dict[str, Route]] = {}
        for route in self._prefixes:
            if raw_path.startswith(route.template):
                prefix_maps.setdefault(route.template, {})[route.method] = route
        for prefix, route_map in prefix_maps.items():
            yield route_map, {"path": _decode_prefix_rest(raw_path[len(prefix):])}
        if raw_path != "/" and raw_path.endswith("/"):
            return  # trailing-slash policy: never matches a template
        segments = raw_path.split("/")[1:]
        for node, values in _walk(self._root, segments, 0, []):
            yield node.routes, values

    def _allowed(self, raw_path: str) -> tuple[tuple[str, ...], str | None]:
        """The methods the path's routes take, and the best match's template."""
        methods: set[str] = set()
        template = None
        for route_map, _ in self._candidates(raw_path):
            methods.update(route_map)
            if template is None and route_map:
                template = next(iter(route_map.values())).template
        if "GET" in methods:
            methods.add("HEAD")
        return tuple(sorted(methods)), template


def _walk(node: _Node, segments: list[str], index: int,
          values: list[str]) -> Iterator[tuple[_Node, list[str]]]:
    """Depth-first over the trie, literal before parameter; yields nodes holding routes."""
    if index == len(segments):
        if node.routes:
            yield node, values
        return
    segment = segments[index]
    child = node.literals.get(segment)
    if child is not None:
        yield from _walk(child, segments, index + 1, values)
    if node.param is not None:
        yield from _walk(node.param, segments, index + 1, [*values, segment])


def _check_method(method: str) -> None:
    if not _METHOD_RE.fullmatch(method):
        raise ValueError(f"invalid method {method!r}")


def _compile(template: str) -> tuple[list[str | None], tuple[str, ...]]:
    """Template → segments (None marks a parameter) and parameter names, validated."""
    if not template.startswith("/") or (template != "/" and template.endswith("/")):
        raise ValueError(f"template {template!r} must start with '/' and not end with one")
    segments: list[str | None] = []
    params: list[str] = []
    for part in template.split("/")[1:]:
        match = _PARAM_TEMPLATE_RE.fullmatch(part)
        if match:
            if match.group(1) in params:
                raise ValueError(f"parameter {match.group(1)!r} repeated in {template!r}")
            params.append(match.group(1))
            segments.append(None)
        elif _LITERAL_RE.fullmatch(part) or (part == "" and template == "/"):
            segments.append(part)
        else:
            raise ValueError(f"invalid segment {part!r} in template {template!r}")
    return segments, tuple(params)


def _percent_decode(raw: str) -> str:
    """Decode once, strictly: a stray '%' or invalid UTF-8 is a 400, never a guess."""
    if _BAD_PERCENT_RE.search(raw):
        raise BadRequest("invalid percent-encoding in path")
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("path is not valid UTF-8") from None


def _decode(names: tuple[str, ...], raw_values: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, raw in zip(names, raw_values):
        if "%" not in raw and raw.isascii():
            # Nothing to decode (the usual id or name); for ASCII text, "not printable" is
            # exactly _CONTROL_RE (C0 controls and DEL), without a regex search.
            value, control = raw, not raw.isprintable()
        else:
            value = _percent_decode(raw)
            control = _CONTROL_RE.search(value) is not None
        if not value or len(value) > MAX_PARAM_LENGTH:
            raise BadRequest(f"path parameter {name} must be 1-{MAX_PARAM_LENGTH} characters")
        if control or value == "." or ".." in value or "/" in value:
            raise BadRequest(f"invalid characters in path parameter {name}")
        params[name] = value
    return params


def _decode_prefix_rest(raw: str) -> str:
    """The remainder under a prefix: may contain '/', but no '.', '..' or empty segments."""
    value = _percent_decode(raw)
    if len(value) > MAX_PREFIX_PATH or _CONTROL_RE.search(value) or "\\" in value:
        raise BadRequest("invalid path")
    if value and any(part in ("", ".", "..") for part in value.split("/")):
        raise BadRequest("invalid path")
    return value
