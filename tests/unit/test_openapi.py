"""/v1/openapi.json is generated from the router's table, so the two cannot drift apart."""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferrohsm import app as wiring
from ferrohsm.api import openapi
from ferrohsm.api.handlers import system
from ferrohsm.api.handlers.common import b64
from ferrohsm.api.http import Response
from ferrohsm.api.router import Operation, Route, Router
from ferrohsm.api.transit import is_vault
from ferrohsm.auth.denylist import valid_jti
from ferrohsm.auth.permissions import Action
from ferrohsm.config import Secrets, load_config
from ferrohsm.control.policy import APPROVABLE, SYSTEM_APPROVABLE
from ferrohsm.domain.errors import BadRequest
from ferrohsm.telemetry.metrics import ServerMetrics

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Route]]:
    """The route table exactly as the composition root builds it (memory store, no server)."""
    data = tmp_path_factory.mktemp("openapi")
    config = load_config(None, env={}, overrides={("storage", "key_store"): "memory",
                                                  ("storage", "data_dir"): str(data)})
    rt = wiring.build_runtime(config, Secrets(secrets.token_bytes(32), secrets.token_bytes(32),
                                              secrets.token_bytes(32)))
    try:
        yield rt.router.routes()
    finally:
        wiring.shutdown(rt, None)


@pytest.fixture(scope="module")
def doc(routes: list[Route]) -> dict[str, Any]:
    return openapi.document(routes)


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, item in doc["paths"].items()
            for method, op in item.items()}


def test_every_route_is_documented_and_every_operation_is_routed(
        routes: list[Route], doc: dict[str, Any]) -> None:
    # The Vault-compatible surface is Vault's API, documented in README.md instead
    native = [r for r in routes if not is_vault(r.template)]
    routed = {(r.method, r.template) for r in native}
    documented = set(operations(doc))
    assert routed - documented == set(), "declare doc=Operation(...) where these are added"
    assert documented - routed == set()
    assert all(r.doc is not None for r in native)
    assert not any(is_vault(path) for _, path in documented)


def test_operation_ids_are_the_route_names_and_unique(routes: list[Route],
                                                      doc: dict[str, Any]) -> None:
    ops = operations(doc)
    assert {(r.method, r.template): r.name for r in routes if r.doc is not None} == {
        key: op["operationId"] for key, op in ops.items()}
    ids = [op["operationId"] for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_approval_required_follows_the_actions_approvability(routes: list[Route],
                                                             doc: dict[str, Any]) -> None:
    ops = operations(doc)
    for route in routes:
        if is_vault(route.template):
            continue  # Vault's API, not in the document
        assert route.doc is not None
        op = ops[(route.method, route.template)]
        approvable = route.doc.action in APPROVABLE | SYSTEM_APPROVABLE
        header = {"$ref": "#/components/parameters/approvalHeader"}
        assert ("202" in op["responses"]) == approvable, route.template
        assert (header in op.get("parameters", [])) == approvable, route.template
    documented = {Action(r.doc.action) for r in routes if r.doc and r.doc.action}
    assert APPROVABLE | SYSTEM_APPROVABLE <= documented, "every approvable action has a route"


def test_v1_routes_need_a_bearer_token_and_only_they(doc: dict[str, Any]) -> None:
    for (method, path), op in operations(doc).items():
        needs_token = path.startswith("/v1/")
        if needs_token:
            assert op["security"] == [{"bearer": []}], (method, path)
        elif path == "/healthz":  # anonymous (status only), or a token for the details
            assert op["security"] == [{}, {"bearer": []}]
        else:
            assert "security" not in op, (method, path)
        assert ("401" in op["responses"]) == needs_token, (method, path)


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    def refs(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)
    found = set(refs(doc))
    assert found
    for ref in found:
        _, _, kind, name = ref.split("/")
        assert name in doc["components"][kind], ref


def test_path_parameters_are_declared(doc: dict[str, Any]) -> None:
    parameters = doc["components"]["parameters"]
    for (method, path), op in operations(doc).items():
        declared = {parameters[p["$ref"].rsplit("/", 1)[1]]["name"]
                    for p in op.get("parameters", [])
                    if parameters[p["$ref"].rsplit("/", 1)[1]]["in"] == "path"}
        in_path = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        assert declared == in_path, (method, path)


def test_operations_are_well_formed(doc: dict[str, Any]) -> None:
    tags = {t["name"] for t in doc["tags"]}
    for (method, path), op in operations(doc).items():
        assert method.lower() in METHODS
        assert op["summary"] and set(op["tags"]) <= tags, (method, path)
        assert any(code.startswith("2") or code.startswith("3") for code in op["responses"])


def test_the_document_is_built_from_whatever_the_router_holds() -> None:
    router = Router()

    def handler(*args: object) -> None:
        return None
    router.add("POST", "/v1/things/{key}/poke", handler, name="poke", doc=Operation(
        "Poke a thing", ("keys",), Action.ENCRYPT, request="Empty", response="Key"))
    router.add("GET", "/hidden", handler, name="hidden")
    op = openapi.document(router.routes())["paths"]["/v1/things/{key}/poke"]["post"]
    assert op["operationId"] == "poke" and op["x-ferrohsm-action"] == "crypto.encrypt"
    assert "202" in op["responses"] and op["requestBody"]["required"] is False
    assert "/hidden" not in openapi.document(router.routes())["paths"]


@pytest.mark.parametrize("doc_", [
    Operation("x", ("keys",), response="NoSuchSchema"),
    Operation("x", ("keys",), query=("noSuchParameter",)),
    Operation("x", ("no-such-tag",)),
])
def test_an_unknown_component_fails_the_build(doc_: Operation) -> None:
    router = Router()
    router.add("GET", "/v1/x", lambda *a: None, name="x", doc=doc_)
    with pytest.raises(ValueError):
        openapi.document(router.routes())


def test_served_document_covers_routes_added_later_and_is_built_once() -> None:
    router = Router()
    system.register(router, lambda: {"status": "ok"}, ServerMetrics(), lambda ctx, req: False)
    router.add("GET", "/v1/later", lambda *a: None, name="later",
               doc=Operation("Added after the system routes", ("system",)))
    route, _ = router.match("GET", "/v1/openapi.json")
    first = route.handler(None, None, {})  # the handler reads neither context nor request
    second = route.handler(None, None, {})
    assert isinstance(first, Response) and isinstance(second, Response)
    assert first.body is second.body and first.headers is not second.headers
    assert json.loads(first.body) == openapi.document(router.routes())
    assert "/v1/later" in json.loads(first.body)["paths"]


def test_links_lead_to_operations_that_exist(doc: dict[str, Any]) -> None:
    """201 of createKey leads to the key's operations; a 202 to its approval."""
    ids = {op["operationId"] for op in operations(doc).values()}
    links = operations(doc)[("POST", "/v1/keys")]["responses"]["201"]["links"]
    assert {"getKey", "rotateKey", "rollbackKey", "revokeKey", "destroyKey", "cancelDestroyKey",
            "encrypt", "decrypt", "sign", "verify", "wrap", "unwrap"} <= set(links)
    parked = doc["components"]["responses"]["approval_required"]["links"]
    assert parked["getApproval"]["parameters"] == {"id": "$response.body#/approval/id"}
    for op in operations(doc).values():
        for answer in op["responses"].values():
            for link in answer.get("links", {}).values():
                assert link["operationId"] in ids
    for link in parked.values():
        assert link["operationId"] in ids


def test_object_responses_list_their_required_members(doc: dict[str, Any]) -> None:
    """`{}` must not validate against a response schema: each names its required members."""
    schemas = doc["components"]["schemas"]
    for (method, path), op in operations(doc).items():
        for answer in op["responses"].values():
            for media in answer.get("content", {}).values():
                ref = media["schema"].get("$ref")
                if ref is not None:
                    name = ref.rsplit("/", 1)[1]
                    # one item or a batch (anyOf): each alternative names its members
                    branches = [b["$ref"].rsplit("/", 1)[1]
                                for b in schemas[name].get("anyOf", ())] or [name]
                    for branch in branches:
                        assert schemas[branch].get("required"), (method, path, branch)


def test_generic_errors_are_listed_only_where_they_can_happen(doc: dict[str, Any]) -> None:
    ops = operations(doc)
    assert "404" not in ops[("GET", "/v1/keys")]["responses"]
    assert "409" not in ops[("GET", "/v1/keys/{key}")]["responses"]
    assert "415" not in ops[("GET", "/v1/audit")]["responses"]
    assert {"409", "410"} <= set(ops[("POST", "/v1/keys/{key}/encrypt")]["responses"])
    assert "304" in ops[("GET", "/v1/keys")]["responses"]
    assert ops[("POST", "/v1/tokens/revoke")]["requestBody"]["required"] is True


@given(st.text(alphabet="AQgwBCRhx+/=", max_size=12) | st.binary(max_size=9).map(
    lambda b: base64.b64encode(b).decode()))
def test_the_base64_pattern_is_exactly_what_the_server_takes(text: str) -> None:
    pattern = re.compile(openapi.B64["pattern"])
    try:
        b64(text, "f")
        accepted = True
    except BadRequest:
        accepted = False
    assert accepted == (pattern.fullmatch(text) is not None), text


@given(st.text(max_size=6))
def test_the_plain_text_pattern_is_the_servers_rule(text: str) -> None:
    published = re.compile(openapi.PLAIN_TEXT["pattern"])
    assert (published.fullmatch(text) is not None) == valid_jti(text or "x")
