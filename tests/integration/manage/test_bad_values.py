"""Values that fit their JSON types but would break later (an upstream URL nobody can dial, an instant
outside what UTC can hold) and bodies that are not JSON at all: refused when they arrive, never a 500.

The time tests run over SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from llmproxy.manage.checks import MAX_METADATA_DEPTH
from tests.integration.manage.support import AUTH, UNDIALLABLE_URLS, UNKNOWN_ID, UPSTREAM_KEY, Manage

# each is a valid RFC 3339 time whose instant, in UTC, falls before year 1 or after year 9999
NOT_IN_UTC = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]
EXTREMES_IN_UTC = ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"]
NOT_JSON = [
    b'{"name": "x",}',
    b'{"a":1}garbage',
    b'{"name": NaN}',
    b'{"name": "x" "api_key": "k"}',
    b'{"name": "\xff"}',
    b'{"owner": "\xff"}',
    b'{"owner": 1,}',
    b'{"is_active": true}}',
    b"[" * 100_000,
]


@pytest.fixture(params=["sqlite", "postgres"])
def either(request: pytest.FixtureRequest) -> Manage:
    """The management API over SQLite, then over PostgreSQL."""
    fixture = "manage" if request.param == "sqlite" else "pg_manage"
    return request.getfixturevalue(fixture)  # type: ignore[no-any-return]


@pytest.mark.parametrize("url", UNDIALLABLE_URLS)
async def test_an_upstream_url_the_proxy_cannot_dial_is_422_on_create(manage: Manage, url: str) -> None:
    body = {"name": "acme", "api_key": UPSTREAM_KEY, "upstream_base_url": url}
    response = await manage.client.post("/manage/projects", json=body, headers=AUTH)
    assert response.status == 422, await response.text()
    error = (await response.json())["error"]
    assert (error["code"], error["param"]) == ("invalid_field", "upstream_base_url")
    assert await manage.store.list_projects() == []


@pytest.mark.parametrize("url", UNDIALLABLE_URLS)
async def test_an_upstream_url_the_proxy_cannot_dial_is_422_on_patch(manage: Manage, url: str) -> None:
    project = await manage.create_project(upstream_base_url="http://127.0.0.1:8081/v1")
    response = await manage.client.patch(
        f"/manage/projects/{project['id']}", json={"upstream_base_url": url}, headers=AUTH
    )
    assert response.status == 422, await response.text()
    assert (await response.json())["error"]["param"] == "upstream_base_url"
    stored = await manage.store.get_project(project["id"])
    assert stored is not None and stored.upstream_base_url == "http://127.0.0.1:8081/v1"


@pytest.mark.parametrize("url", ["http://127.0.0.1:65535/v1", "https://[::1]:1", "http://llm.internal"])
async def test_an_upstream_url_with_a_host_and_a_port_in_range_is_accepted(manage: Manage, url: str) -> None:
    project = await manage.create_project(upstream_base_url=url)
    assert project["upstream_base_url"] == url


@pytest.mark.parametrize("expires_at", NOT_IN_UTC)
async def test_an_expiry_that_utc_cannot_hold_is_422_naming_expires_at(
    either: Manage, expires_at: str
) -> None:
    project = await either.create_project()
    token = await either.create_token(project["id"])
    response = await either.client.patch(
        f"/manage/tokens/{token['id']}", json={"expires_at": expires_at}, headers=AUTH
    )
    assert response.status == 422, await response.text()
    error = (await response.json())["error"]
    assert (error["code"], error["param"]) == ("invalid_field", "expires_at")
    stored = await either.store.get_token(token["id"])
    assert stored is not None and stored.expires_at is None


@pytest.mark.parametrize("expires_at", EXTREMES_IN_UTC)
async def test_the_first_and_last_instants_utc_holds_are_stored_and_read_back_exactly(
    either: Manage, expires_at: str
) -> None:
    project = await either.create_project()
    token = await either.create_token(project["id"])
    response = await either.client.patch(
        f"/manage/tokens/{token['id']}", json={"expires_at": expires_at}, headers=AUTH
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["expires_at"] == expires_at
    read = await either.client.get(f"/manage/tokens/{token['id']}", headers=AUTH)
    assert (await read.json())["expires_at"] == expires_at
    listed = await (await either.client.get("/manage/tokens", headers=AUTH)).json()
    assert [t["expires_at"] for t in listed] == [expires_at]


@pytest.mark.parametrize("bound", ["since", "until"])
@pytest.mark.parametrize("moment", NOT_IN_UTC)
async def test_an_audit_bound_that_utc_cannot_hold_is_422_naming_it(
    either: Manage, bound: str, moment: str
) -> None:
    response = await either.client.get(f"/manage/audit?{bound}={quote(moment)}", headers=AUTH)
    assert response.status == 422, await response.text()
    error = (await response.json())["error"]
    assert (error["code"], error["param"]) == ("invalid_field", bound)


async def test_audit_bounds_at_the_first_and_last_instants_utc_holds_filter_correctly(either: Manage) -> None:
    await either.create_project()
    await either.auditor.flush()
    first, last = (quote(moment) for moment in EXTREMES_IN_UTC)
    pages = {
        query: await (await either.client.get(f"/manage/audit?{query}", headers=AUTH)).json()
        for query in (f"since={first}", f"until={last}", f"until={first}", f"since={last}")
    }
    assert [page["total_count"] for page in pages.values()] == [1, 1, 0, 0]


@pytest.mark.parametrize("body", NOT_JSON, ids=lambda body: repr(body[:24]))
async def test_a_body_that_is_not_json_is_400_on_every_route_with_a_body(manage: Manage, body: bytes) -> None:
    project = await manage.create_project()
    token = await manage.create_token(project["id"])
    routes = [
        ("POST", "/manage/projects"),
        ("PATCH", f"/manage/projects/{project['id']}"),
        ("POST", "/manage/tokens"),
        ("PATCH", f"/manage/tokens/{token['id']}"),
    ]
    for method, path in routes:
        response = await manage.client.request(
            method, path, data=body, headers={**AUTH, "Content-Type": "application/json"}
        )
        assert response.status == 400, (method, path, await response.text())
        assert (await response.json())["error"]["code"] == "invalid_json"


async def test_a_refused_token_for_an_inactive_project_is_audited_with_the_project_id(manage: Manage) -> None:
    project = await manage.create_project()
    await manage.client.patch(f"/manage/projects/{project['id']}", json={"is_active": False}, headers=AUTH)
    response = await manage.client.post(
        "/manage/tokens", json={"project_id": project["id"].upper()}, headers=AUTH
    )
    assert response.status == 403
    [row] = await manage.audit(action="token.create")
    assert (row.result, row.reason, row.project_id) == ("denied", "project_inactive", project["id"])


async def test_a_refused_token_for_an_unknown_project_is_audited_with_the_project_id(manage: Manage) -> None:
    response = await manage.client.post("/manage/tokens", json={"project_id": UNKNOWN_ID}, headers=AUTH)
    assert response.status == 404
    [row] = await manage.audit(action="token.create")
    assert (row.result, row.reason, row.project_id) == ("error", "not_found", UNKNOWN_ID)


# NUL ("\u0000" in JSON, %00 in a query) is text PostgreSQL cannot hold: each of these was a 500 there
NUL_IN_TOKEN_FIELDS = {
    "name": {"name": "a\u0000b"},
    "metadata value": {"metadata": {"team": "a\u0000b"}},
    "metadata key": {"metadata": {"te\u0000am": "x"}},
    "metadata, deep": {"metadata": {"a": [{"b": ["\u0000"]}]}},
    "allowed_models": {"allowed_models": ["gpt-4o", "o3\u0000*"]},
}


@pytest.mark.parametrize("fields", NUL_IN_TOKEN_FIELDS.values(), ids=NUL_IN_TOKEN_FIELDS.keys())
async def test_text_with_nul_is_422_on_token_create_and_patch(either: Manage, fields: dict[str, Any]) -> None:
    [name] = fields
    project = await either.create_project()
    created = await either.client.post(
        "/manage/tokens", json={"project_id": project["id"], **fields}, headers=AUTH
    )
    assert created.status == 422, await created.text()
    assert (await created.json())["error"]["param"] == name
    token = await either.create_token(project["id"])
    patched = await either.client.patch(f"/manage/tokens/{token['id']}", json=fields, headers=AUTH)
    assert patched.status == 422, await patched.text()
    assert (await patched.json())["error"]["param"] == name


@pytest.mark.parametrize("field", ["name", "api_key"])
async def test_text_with_nul_is_422_on_project_create(either: Manage, field: str) -> None:
    body = {"name": "acme", "api_key": UPSTREAM_KEY, field: "sk-a\u0000b"}
    response = await either.client.post("/manage/projects", json=body, headers=AUTH)
    assert response.status == 422, await response.text()
    assert (await response.json())["error"]["param"] == field
    assert await either.store.list_projects() == []


async def test_a_usage_model_filter_with_nul_is_422(either: Manage) -> None:
    response = await either.client.get("/manage/usage?model=gpt%00", headers=AUTH)
    assert response.status == 422, await response.text()
    assert (await response.json())["error"]["param"] == "model"


def nested(levels: int) -> Any:
    value: Any = "leaf"
    for n in range(levels - 1):
        value = [value] if n % 2 else {"k": value}
    return {"deep": value}


async def test_metadata_nested_past_the_limit_is_422_on_create_and_patch(either: Manage) -> None:
    project = await either.create_project()
    too_deep = nested(MAX_METADATA_DEPTH + 1)
    response = await either.client.post(
        "/manage/tokens", json={"project_id": project["id"], "metadata": too_deep}, headers=AUTH
    )
    assert response.status == 422, await response.text()
    error = (await response.json())["error"]
    assert error["param"] == "metadata" and str(MAX_METADATA_DEPTH) in error["message"]
    token = await either.create_token(project["id"], metadata=nested(MAX_METADATA_DEPTH))
    patched = await either.client.patch(
        f"/manage/tokens/{token['id']}", json={"metadata": too_deep}, headers=AUTH
    )
    assert patched.status == 422, await patched.text()
    stored = await either.store.get_token(token["id"])
    assert stored is not None and stored.metadata == nested(MAX_METADATA_DEPTH)
