"""Projects over the management API: create, read, update, deactivate, never delete, never leak the key."""

from __future__ import annotations

from datetime import datetime

import pytest

from llmproxy.auth.tokens import hash_token
from llmproxy.errors import ProxyError, Refusal
from tests.integration.manage.support import (
    AUTH,
    SPEND_LIMITS,
    UNKNOWN_ID,
    UPSTREAM_KEY,
    USAGE_TOTALS,
    Manage,
)

PROJECT_KEYS = {
    "id",
    "name",
    "api_key",
    "upstream_base_url",
    "is_active",
    "created_at",
    "updated_at",
    "deactivated_at",
    *SPEND_LIMITS,
    *USAGE_TOTALS,
}
OBFUSCATED_KEY = "sk-…WXYZ"


async def test_creating_a_project_answers_201_with_the_key_obfuscated(manage: Manage) -> None:
    response = await manage.client.post(
        "/manage/projects",
        json={"name": "acme", "api_key": UPSTREAM_KEY, "upstream_base_url": "https://llm.example.com/"},
        headers=AUTH,
    )
    assert response.status == 201
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert set(body) == PROJECT_KEYS
    assert body["name"] == "acme"
    assert body["api_key"] == OBFUSCATED_KEY
    assert body["upstream_base_url"] == "https://llm.example.com"
    assert body["is_active"] is True
    assert body["deactivated_at"] is None
    assert body["created_at"] == body["updated_at"]
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None
    stored = await manage.store.get_project(body["id"])
    assert stored is not None and stored.api_key == UPSTREAM_KEY


async def test_no_project_response_contains_the_upstream_key(manage: Manage) -> None:
    project = await manage.create_project()
    pid = project["id"]
    texts = [
        await (await manage.client.get("/manage/projects", headers=AUTH)).text(),
        await (await manage.client.get(f"/manage/projects/{pid}", headers=AUTH)).text(),
        await (
            await manage.client.patch(f"/manage/projects/{pid}", json={"name": "acme2"}, headers=AUTH)
        ).text(),
        await (
            await manage.client.patch(
                f"/manage/projects/{pid}", json={"api_key": UPSTREAM_KEY + "2"}, headers=AUTH
            )
        ).text(),
    ]
    for text in texts:
        assert UPSTREAM_KEY not in text
        assert OBFUSCATED_KEY.replace("WXYZ", "") in text


async def test_listing_projects_shows_every_project(manage: Manage) -> None:
    a = await manage.create_project("a")
    b = await manage.create_project("b", api_key="short")
    response = await manage.client.get("/manage/projects", headers=AUTH)
    assert response.status == 200
    listed = await response.json()
    assert [p["id"] for p in listed] == [a["id"], b["id"]]
    assert listed[1]["api_key"] == "…"


async def test_getting_a_project_answers_its_current_state(manage: Manage) -> None:
    project = await manage.create_project()
    response = await manage.client.get(f"/manage/projects/{project['id'].upper()}", headers=AUTH)
    assert response.status == 200
    assert await response.json() == project


@pytest.mark.parametrize("project_id", [UNKNOWN_ID, "not-a-uuid", "1", "00000000000040008000000000000000"])
async def test_an_unknown_or_malformed_project_id_is_404(manage: Manage, project_id: str) -> None:
    for method, body in (("GET", None), ("PATCH", {"name": "x"}), ("POST", None)):
        path = f"/manage/projects/{project_id}" + ("/tokens/revoke" if method == "POST" else "")
        response = await manage.client.request(method, path, json=body, headers=AUTH)
        assert response.status == 404, (method, path)
        error = (await response.json())["error"]
        assert (error["code"], error["message"]) == ("not_found", "Project not found")


async def test_a_taken_project_name_is_409(manage: Manage) -> None:
    await manage.create_project("acme")
    response = await manage.client.post(
        "/manage/projects", json={"name": "acme", "api_key": "k"}, headers=AUTH
    )
    assert response.status == 409
    error = (await response.json())["error"]
    assert (error["code"], error["param"]) == ("conflict", "name")


async def test_invalid_json_is_400(manage: Manage) -> None:
    for body in (b"{not json", b"", b'{"name": "a",'):
        response = await manage.client.post("/manage/projects", data=body, headers=AUTH)
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"api_key": "k"}, "name"),
        ({"name": "a"}, "api_key"),
        ({"name": 1, "api_key": "k"}, "name"),
        ({"name": "   ", "api_key": "k"}, "name"),
        ({"name": "a", "api_key": ""}, "api_key"),
        ({"name": "a", "api_key": "k", "owner": "me"}, "owner"),
        ({"name": "a", "api_key": "k", "upstream_base_url": "ftp://x"}, "upstream_base_url"),
        ({"name": "a", "api_key": "sk-…WXYZ"}, "api_key"),
        ({"name": "a", "api_key": "sk-12345678...WXYZ"}, "api_key"),
    ],
)
async def test_a_bad_field_on_create_is_422_naming_it(
    manage: Manage, body: dict[str, object], param: str
) -> None:
    response = await manage.client.post("/manage/projects", json=body, headers=AUTH)
    assert response.status == 422
    error = (await response.json())["error"]
    assert (error["code"], error["type"], error["param"]) == ("invalid_field", "invalid_request_error", param)
    assert await manage.store.list_projects() == []


async def test_a_json_array_body_is_422(manage: Manage) -> None:
    response = await manage.client.post("/manage/projects", json=[1], headers=AUTH)
    assert response.status == 422
    assert (await response.json())["error"]["message"] == "Expected `object`, got `array`"


async def test_a_body_over_1_mib_is_413(manage: Manage) -> None:
    body = b'{"name": "a", "api_key": "' + b"k" * (1024 * 1024) + b'"}'
    response = await manage.client.post("/manage/projects", data=body, headers=AUTH)
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "request_too_large"


async def test_patching_a_project_changes_only_the_given_fields(manage: Manage) -> None:
    project = await manage.create_project(upstream_base_url="https://a.example")
    response = await manage.client.patch(
        f"/manage/projects/{project['id']}", json={"name": "renamed", "upstream_base_url": None}, headers=AUTH
    )
    assert response.status == 200
    body = await response.json()
    assert body["name"] == "renamed"
    assert body["upstream_base_url"] is None
    assert body["api_key"] == project["api_key"]
    assert body["updated_at"] > project["updated_at"]
    assert await (await manage.client.get(f"/manage/projects/{project['id']}", headers=AUTH)).json() == body


async def test_an_empty_patch_changes_nothing(manage: Manage) -> None:
    project = await manage.create_project()
    response = await manage.client.patch(f"/manage/projects/{project['id']}", json={}, headers=AUTH)
    assert response.status == 200
    assert await response.json() == project


async def test_deactivating_sets_deactivated_at_and_reactivating_clears_it(manage: Manage) -> None:
    project = await manage.create_project()
    path = f"/manage/projects/{project['id']}"
    off = await (await manage.client.patch(path, json={"is_active": False}, headers=AUTH)).json()
    assert off["is_active"] is False
    assert off["deactivated_at"] is not None
    again = await (await manage.client.patch(path, json={"is_active": False}, headers=AUTH)).json()
    assert again["deactivated_at"] == off["deactivated_at"]
    on = await (await manage.client.patch(path, json={"is_active": True}, headers=AUTH)).json()
    assert (on["is_active"], on["deactivated_at"]) == (True, None)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"revoke_tokens": True}, "revoke_tokens"),
        ({"revoke_tokens": True, "is_active": True}, "revoke_tokens"),
        ({"is_active": "no"}, "is_active"),
        ({"name": None}, "name"),
        ({"api_key": "sk-…WXYZ"}, "api_key"),
        ({"id": UNKNOWN_ID}, "id"),
    ],
)
async def test_a_bad_field_on_patch_is_422_naming_it(
    manage: Manage, body: dict[str, object], param: str
) -> None:
    project = await manage.create_project()
    response = await manage.client.patch(f"/manage/projects/{project['id']}", json=body, headers=AUTH)
    assert response.status == 422
    assert (await response.json())["error"]["param"] == param


async def test_deleting_a_project_is_405_with_allow(manage: Manage) -> None:
    project = await manage.create_project()
    response = await manage.client.delete(f"/manage/projects/{project['id']}", headers=AUTH)
    assert response.status == 405
    assert response.headers["Allow"] == "GET, HEAD, PATCH"
    assert (await response.json())["error"]["code"] == "method_not_allowed"
    assert await manage.store.get_project(project["id"]) is not None


async def test_an_unsupported_method_is_405_with_allow(manage: Manage) -> None:
    response = await manage.client.put("/manage/projects", json={}, headers=AUTH)
    assert response.status == 405
    assert response.headers["Allow"] == "GET, HEAD, POST"


async def test_bulk_revoke_counts_revoked_and_already_revoked_tokens(manage: Manage) -> None:
    project = await manage.create_project()
    tokens = [await manage.create_token(project["id"]) for _ in range(3)]
    other = await manage.create_project("other")
    survivor = await manage.create_token(other["id"])
    assert (await manage.client.delete(f"/manage/tokens/{tokens[0]['id']}", headers=AUTH)).status == 204
    path = f"/manage/projects/{project['id']}/tokens/revoke"
    response = await manage.client.post(path, headers=AUTH)
    assert response.status == 200
    assert await response.json() == {"revoked_count": 2, "already_revoked_count": 1, "total_tokens": 3}
    assert await (await manage.client.post(path, headers=AUTH)).json() == {
        "revoked_count": 0,
        "already_revoked_count": 3,
        "total_tokens": 3,
    }
    assert [t.is_active for t in await manage.store.list_tokens(project["id"])] == [False, False, False]
    assert (await manage.store.get_token(survivor["id"])).is_active is True  # type: ignore[union-attr]
    [first, second] = sorted(
        await manage.audit(action="token.revoke_batch"), key=lambda r: r.details["revoked_count"]
    )
    assert first.details == {"revoked_count": 0, "already_revoked_count": 3, "total_tokens": 3}
    assert second.project_id == project["id"]


async def test_deactivating_with_revoke_tokens_revokes_them_and_audits_both(manage: Manage) -> None:
    project = await manage.create_project()
    token = await manage.create_token(project["id"])
    response = await manage.client.patch(
        f"/manage/projects/{project['id']}", json={"is_active": False, "revoke_tokens": True}, headers=AUTH
    )
    assert response.status == 200
    stored = await manage.store.get_token(token["id"])
    assert stored is not None and stored.is_active is False and stored.deactivated_at is not None
    [deactivate] = await manage.audit(action="project.deactivate")
    assert deactivate.details == {"fields": ["is_active"]}
    [batch] = await manage.audit(action="token.revoke_batch")
    assert batch.details == {"revoked_count": 1, "already_revoked_count": 0, "total_tokens": 1}


async def test_deactivating_a_project_refuses_its_tokens_at_once(manage: Manage) -> None:
    project = await manage.create_project()
    token = await manage.create_token(project["id"])
    grant = await manage.authority.check(token["token"])  # now cached for key_cache_ttl
    assert grant.api_key == UPSTREAM_KEY
    await manage.client.patch(f"/manage/projects/{project['id']}", json={"is_active": False}, headers=AUTH)
    with pytest.raises(ProxyError) as refused:
        await manage.authority.check(token["token"])
    assert refused.value.refusal is Refusal.PROJECT_INACTIVE


async def test_a_new_upstream_key_is_used_at_once(manage: Manage) -> None:
    project = await manage.create_project()
    token = await manage.create_token(project["id"])
    await manage.authority.check(token["token"])
    new_key = "sk-rotated-upstream-key-0000000000000"
    await manage.client.patch(f"/manage/projects/{project['id']}", json={"api_key": new_key}, headers=AUTH)
    assert (await manage.authority.check(token["token"])).api_key == new_key


async def test_project_changes_are_audited_without_the_key(manage: Manage) -> None:
    project = await manage.create_project(upstream_base_url="https://a.example")
    await manage.client.patch(
        f"/manage/projects/{project['id']}", json={"name": "b", "api_key": UPSTREAM_KEY + "2"}, headers=AUTH
    )
    [created] = await manage.audit(action="project.create")
    assert (created.result, created.actor, created.project_id) == ("success", "management_api", project["id"])
    assert created.details == {"name": "acme", "upstream_base_url": "https://a.example"}
    assert (created.method, created.path) == ("POST", "/manage/projects")
    assert created.request_id
    [updated] = await manage.audit(action="project.update")
    assert updated.details == {"fields": ["api_key", "name"], "name": "b"}
    with open(manage.settings.audit.log_file) as audit_file:
        log = audit_file.read()
    assert '"action":"project.create"' in log
    assert "upstream-secret" not in log and "upstream-secret" not in repr(await manage.audit())
    assert hash_token(UPSTREAM_KEY) not in log


async def test_a_failed_change_is_audited_as_an_error(manage: Manage) -> None:
    response = await manage.client.patch(f"/manage/projects/{UNKNOWN_ID}", json={"name": "x"}, headers=AUTH)
    assert response.status == 404
    [row] = await manage.audit(action="project.update")
    assert (row.result, row.reason, row.project_id) == ("error", "not_found", UNKNOWN_ID)
