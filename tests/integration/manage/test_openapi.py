"""/manage/openapi.json describes every management route with schemas that resolve."""

from __future__ import annotations

import json
from typing import Any

from llmproxy.manage.api import ManageAPI
from tests.integration.manage.support import AUTH, Manage

ROUTE_METHODS = {
    "/manage/openapi.json": {"get"},
    "/manage/projects": {"get", "post"},
    "/manage/projects/{id}": {"get", "patch", "delete"},
    "/manage/projects/{id}/tokens/revoke": {"post"},
    "/manage/tokens": {"get", "post"},
    "/manage/tokens/{id}": {"get", "patch", "delete"},
    "/manage/cache": {"delete"},
    "/manage/usage": {"get"},
    "/manage/audit": {"get"},
}


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


async def fetch(manage: Manage) -> dict[str, Any]:
    response = await manage.client.get("/manage/openapi.json")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    return json.loads(await response.read())


async def test_the_document_is_openapi_3_1_and_lists_every_route(manage: Manage) -> None:
    document = await fetch(manage)
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "llm-proxy management API"
    operations = {path: set(item) - {"parameters"} for path, item in document["paths"].items()}
    assert operations == ROUTE_METHODS


async def test_the_document_matches_the_routes_the_api_serves(manage: Manage) -> None:
    api = ManageAPI(manage.settings.server, manage.store, manage.authority, manage.auditor)
    served = {
        (route.method.lower(), route.path)
        for route in api.routes()
        if route.method not in ("*", "HEAD") and "{tail" not in route.path
    }
    documented = {(method, path) for path, methods in ROUTE_METHODS.items() for method in methods}
    assert served == documented


async def test_every_reference_resolves_and_every_operation_has_responses(manage: Manage) -> None:
    document = await fetch(manage)
    for ref in refs(document):
        assert resolve(document, ref) is not None
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert operation["responses"], (path, method)
            assert operation["summary"]


async def test_request_bodies_and_success_responses_name_their_schemas(manage: Manage) -> None:
    paths = (await fetch(manage))["paths"]

    def schema(operation: dict[str, Any], status: str) -> Any:
        return operation["responses"][status]["content"]["application/json"]["schema"]

    post_token = paths["/manage/tokens"]["post"]
    assert post_token["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TokenCreate"
    }
    assert schema(post_token, "201") == {"$ref": "#/components/schemas/TokenCreated"}
    assert schema(paths["/manage/projects"]["post"], "201") == {"$ref": "#/components/schemas/ProjectOut"}
    assert "204" in paths["/manage/tokens/{id}"]["delete"]["responses"]
    assert "405" in paths["/manage/projects/{id}"]["delete"]["responses"]
    audit_params = {p["name"] for p in paths["/manage/audit"]["get"]["parameters"]}
    assert audit_params == {
        "action",
        "result",
        "project_id",
        "token_id",
        "request_id",
        "actor",
        "since",
        "until",
        "page",
        "page_size",
    }


async def test_the_usage_route_documents_its_filters_and_report(manage: Manage) -> None:
    document = await fetch(manage)
    get = document["paths"]["/manage/usage"]["get"]
    params = {p["name"]: p["schema"] for p in get["parameters"]}
    assert set(params) == {"project_id", "token_id", "model", "since", "until", "group_by"}
    assert set(params["group_by"]["enum"]) == {"day", "model", "token", "project"}
    assert {"type": "string", "format": "date", "description": "a UTC day, YYYY-MM-DD (inclusive)"} in params[
        "since"
    ]["anyOf"]
    assert get["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UsageReport"
    }
    line = document["components"]["schemas"]["UsageLine"]["properties"]
    assert {"requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd"} <= set(line)


async def test_the_schemas_carry_the_bounds_the_api_enforces(manage: Manage) -> None:
    schemas = (await fetch(manage))["components"]["schemas"]
    create = schemas["TokenCreate"]
    assert create["required"] == ["project_id"]
    assert create["additionalProperties"] is False
    duration = create["properties"]["duration_minutes"]["anyOf"][0]
    assert (duration["minimum"], duration["maximum"]) == (1, 525600)
    assert set(schemas["ProjectOut"]["properties"]) >= {"api_key", "is_active", "deactivated_at"}
    assert "token_hash" not in schemas["TokenOut"]["properties"]


async def test_the_document_needs_no_token_but_every_route_declares_the_bearer_scheme(manage: Manage) -> None:
    document = await fetch(manage)
    assert document["components"]["securitySchemes"] == {
        "managementToken": {"type": "http", "scheme": "bearer"}
    }
    assert document["security"] == [{"managementToken": []}]
    assert document["paths"]["/manage/openapi.json"]["get"]["security"] == []
    authorized = await manage.client.get("/manage/openapi.json", headers=AUTH)
    assert json.loads(await authorized.read()) == document


async def test_a_token_s_status_and_the_active_only_filter_are_documented(manage: Manage) -> None:
    document = await fetch(manage)
    token = document["components"]["schemas"]["TokenOut"]
    assert "status" in token["required"]
    assert set(token["properties"]["status"]["enum"]) == {"active", "expired", "revoked", "exhausted"}
    params = {p["name"]: p for p in document["paths"]["/manage/tokens"]["get"]["parameters"]}
    assert "usable now" in params["active_only"]["schema"]["description"]


async def test_every_operation_that_checks_the_token_documents_the_lockout(manage: Manage) -> None:
    document = await fetch(manage)
    operations = [
        op for item in document["paths"].values() for key, op in item.items() if key != "parameters"
    ]
    guarded = [op["responses"] for op in operations if "401" in op["responses"]]
    assert guarded and all("429" in responses for responses in guarded)
    assert "too_many_attempts" in document["components"]["responses"]["429"]["description"]
