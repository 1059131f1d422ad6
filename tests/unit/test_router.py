"""The router: 404 vs 405, parameter decoding exactly once, traversal refusal, trailing slashes."""

from __future__ import annotations

import pytest

from ferrohsm.api.router import Router
from ferrohsm.domain.errors import BadRequest, MethodNotAllowed, NotFound


def handler(*args: object) -> None:
    return None


@pytest.fixture
def router() -> Router:
    r = Router()
    r.add("POST", "/v1/keys", handler, name="createKey")
    r.add("GET", "/v1/keys", handler, name="listKeys")
    r.add("GET", "/v1/keys/{key}", handler, name="getKey")
    r.add("PATCH", "/v1/keys/{key}", handler, name="updateKey")
    r.add("POST", "/v1/keys/{key}/encrypt", handler, name="encrypt")
    r.add("POST", "/v1/keys/search", handler, name="search")
    r.add("POST", "/v1/approvals/{id}/approve", handler, name="approve")
    r.add("GET", "/healthz", handler, name="health")
    r.add_prefix("GET", "/ui/", handler, name="dashboard")
    return r


def test_static_route(router: Router) -> None:
    route, params = router.match("GET", "/v1/keys")
    assert (route.method, route.template, route.name, params) == ("GET", "/v1/keys",
                                                                  "listKeys", {})
    assert route.handler is handler


def test_parameter_route(router: Router) -> None:
    route, params = router.match("POST", "/v1/keys/release-signing/encrypt")
    assert route.name == "encrypt" and params == {"key": "release-signing"}


def test_parameter_percent_decoded_exactly_once(router: Router) -> None:
    assert router.match("GET", "/v1/keys/a%2541")[1] == {"key": "a%41"}
    assert router.match("GET", "/v1/keys/caf%C3%A9")[1] == {"key": "café"}


def test_literal_segments_are_not_decoded(router: Router) -> None:
    with pytest.raises(NotFound):
        router.match("GET", "/v1/%6Beys")


def test_literal_wins_over_parameter_and_falls_back(router: Router) -> None:
    assert router.match("POST", "/v1/keys/search")[0].name == "search"
    # The literal node has no GET: the parameter branch serves it.
    route, params = router.match("GET", "/v1/keys/search")
    assert route.name == "getKey" and params == {"key": "search"}


def test_unknown_path_is_404(router: Router) -> None:
    for path in ("/", "/v2/keys", "/v1/keys/k/explode", "/v1/keys/k/encrypt/more", "/v1"):
        with pytest.raises(NotFound):
            router.match("GET", path)


def test_wrong_method_is_405_with_sorted_allow(router: Router) -> None:
    with pytest.raises(MethodNotAllowed) as info:
        router.match("DELETE", "/v1/keys/k")
    assert info.value.allow == ("GET", "HEAD", "PATCH")
    assert info.value.route == "/v1/keys/{key}"  # the path's template, for logs and metrics
    with pytest.raises(MethodNotAllowed) as info:
        router.match("GET", "/v1/keys/k/encrypt")
    assert info.value.allow == ("POST",)
    assert info.value.route == "/v1/keys/{key}/encrypt"


def test_unknown_method_on_known_path_is_405(router: Router) -> None:
    with pytest.raises(MethodNotAllowed):
        router.match("BREW", "/healthz")


def test_head_is_served_by_get(router: Router) -> None:
    assert router.match("HEAD", "/healthz")[0].method == "GET"
    with pytest.raises(MethodNotAllowed):
        router.match("HEAD", "/v1/keys/k/encrypt")


def test_trailing_slash_is_404(router: Router) -> None:
    with pytest.raises(NotFound):
        router.match("GET", "/v1/keys/")
    with pytest.raises(NotFound):
        router.match("GET", "/healthz/")


@pytest.mark.parametrize("raw", [
    "a%2Fb", "a%2fb", "%2F", "..", "%2E%2E", "a..b", ".", "%2e", "a%00b", "a%0Ab", "a%7Fb",
    "a%C2%85b", "x" * 257, "%zz", "%4", "a%", "%ff", "%C3",
])
def test_bad_path_parameter_is_400(router: Router, raw: str) -> None:
    with pytest.raises(BadRequest):
        router.match("GET", f"/v1/keys/{raw}")


def test_empty_inner_parameter_is_400(router: Router) -> None:
    with pytest.raises(BadRequest):
        router.match("POST", "/v1/keys//encrypt")


def test_parameter_at_length_limit_is_fine(router: Router) -> None:
    assert router.match("GET", "/v1/keys/" + "x" * 256)[1]["key"] == "x" * 256


def test_prefix_route_gives_remaining_path(router: Router) -> None:
    route, params = router.match("GET", "/ui/")
    assert route.name == "dashboard" and route.is_prefix and params == {"path": ""}
    assert router.match("GET", "/ui/app.js")[1] == {"path": "app.js"}
    assert router.match("GET", "/ui/css/site%20a.css")[1] == {"path": "css/site a.css"}
    assert router.match("HEAD", "/ui/index.html")[0].name == "dashboard"


@pytest.mark.parametrize("rest", ["../secret", "a/../../b", "%2E%2E/x", "./a", "a//b", "a%00",
                                  "a\\b", "%5C..", "%zz"])
def test_prefix_route_refuses_traversal(router: Router, rest: str) -> None:
    with pytest.raises(BadRequest):
        router.match("GET", "/ui/" + rest)


def test_prefix_without_slash_is_404_and_other_methods_405(router: Router) -> None:
    with pytest.raises(NotFound):
        router.match("GET", "/ui")
    with pytest.raises(MethodNotAllowed) as info:
        router.match("POST", "/ui/app.js")
    assert info.value.allow == ("GET", "HEAD")


def test_routes_lists_every_route(router: Router) -> None:
    names = [route.name for route in router.routes()]
    assert names == ["createKey", "listKeys", "getKey", "updateKey", "encrypt", "search",
                     "approve", "health", "dashboard"]


def test_route_parameters_named_per_route() -> None:
    r = Router()
    r.add("GET", "/a/{x}", handler)
    r.add("GET", "/a/{y}/b", handler)
    assert r.match("GET", "/a/1")[1] == {"x": "1"}
    assert r.match("GET", "/a/2/b")[1] == {"y": "2"}


@pytest.mark.parametrize("template", ["v1/keys", "/v1/keys/", "/v1/{key", "/v1/{1x}",
                                      "/v1/{a}/{a}", "/v1/ke ys", "/v1//keys"])
def test_bad_templates_rejected(template: str) -> None:
    with pytest.raises(ValueError):
        Router().add("GET", template, handler)


def test_duplicate_route_rejected(router: Router) -> None:
    with pytest.raises(ValueError):
        router.add("GET", "/v1/keys/{other}", handler)
    with pytest.raises(ValueError):
        router.add("get", "/x", handler)
    with pytest.raises(ValueError):
        router.add_prefix("GET", "/ui/", handler)
    with pytest.raises(ValueError):
        router.add_prefix("GET", "/static", handler)


def test_literal_branch_dead_end_falls_back_to_the_parameter() -> None:
    r = Router()
    r.add("GET", "/x/lit/a", handler, name="literal")
    r.add("GET", "/x/{p}/b", handler, name="param")
    r.add("POST", "/x/lit/b", handler, name="literal-post")
    assert r.match("GET", "/x/lit/a")[0].name == "literal"
    assert r.match("GET", "/x/lit/b")[0].name == "param"  # literal node has no GET
    assert r.match("GET", "/x/other/b")[1] == {"p": "other"}
    with pytest.raises(MethodNotAllowed) as info:
        r.match("PUT", "/x/lit/b")
    assert info.value.allow == ("GET", "HEAD", "POST")
