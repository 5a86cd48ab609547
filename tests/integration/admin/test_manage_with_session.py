"""A signed-in admin browser uses the management API with its session cookie instead of the bearer
token: reads freely, changes only with the session's CSRF token, audited as the admin UI."""

from __future__ import annotations

from tests.integration.admin.conftest import MANAGEMENT_TOKEN, Admin

PROJECT = {"name": "acme", "api_key": "sk-upstream-admin-ui-key-0123456789"}


async def _project_names(admin: Admin) -> list[str]:
    response = await admin.client.get(
        "/manage/projects", headers={"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}
    )
    assert response.status == 200
    return [p["name"] for p in await response.json()]


async def test_a_session_can_list_projects_without_the_bearer_token(signed_in: Admin) -> None:
    response = await signed_in.client.get("/manage/projects")
    assert response.status == 200
    assert await response.json() == []


async def test_a_change_without_the_csrf_header_is_refused_with_403(signed_in: Admin) -> None:
    response = await signed_in.client.post("/manage/projects", json=PROJECT)
    assert response.status == 403
    error = (await response.json())["error"]
    assert "X-CSRF-Token" in error["message"]
    assert await _project_names(signed_in) == []


async def test_a_change_with_a_wrong_csrf_header_is_refused_with_403(signed_in: Admin) -> None:
    response = await signed_in.client.post(
        "/manage/projects", json=PROJECT, headers={"X-CSRF-Token": "x" * len(signed_in.csrf_token)}
    )
    assert response.status == 403
    assert await _project_names(signed_in) == []


async def test_a_change_with_the_csrf_header_is_made_and_audited_as_the_admin_ui(signed_in: Admin) -> None:
    response = await signed_in.client.post(
        "/manage/projects", json=PROJECT, headers={"X-CSRF-Token": signed_in.csrf_token}
    )
    assert response.status == 201, await response.text()
    project = await response.json()
    assert await _project_names(signed_in) == ["acme"]

    [record] = await signed_in.audit("project.create")
    assert (record.result, record.actor, record.project_id) == ("success", "admin_ui", project["id"])


async def test_the_csrf_token_of_one_session_does_not_work_for_another(signed_in: Admin) -> None:
    first_token = signed_in.csrf_token
    signed_in.client.session.cookie_jar.clear()  # another browser signs in: a session of its own
    await signed_in.sign_in()
    assert signed_in.csrf_token != first_token
    response = await signed_in.client.post(
        "/manage/projects", json=PROJECT, headers={"X-CSRF-Token": first_token}
    )
    assert response.status == 403


async def test_the_bearer_token_still_works_and_is_audited_as_the_management_api(admin: Admin) -> None:
    response = await admin.client.post(
        "/manage/projects", json=PROJECT, headers={"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}
    )
    assert response.status == 201
    [record] = await admin.audit("project.create")
    assert record.actor == "management_api"


async def test_a_session_can_generate_and_revoke_a_token(signed_in: Admin) -> None:
    csrf = {"X-CSRF-Token": signed_in.csrf_token}
    project = await (await signed_in.client.post("/manage/projects", json=PROJECT, headers=csrf)).json()
    created = await signed_in.client.post("/manage/tokens", json={"project_id": project["id"]}, headers=csrf)
    assert created.status == 201
    token = await created.json()
    assert token["token"].startswith("sk-")
    revoked = await signed_in.client.delete(f"/manage/tokens/{token['id']}", headers=csrf)
    assert revoked.status == 204
    listed = await (await signed_in.client.get(f"/manage/tokens?project_id={project['id']}")).json()
    assert [(t["id"], t["is_active"]) for t in listed] == [(token["id"], False)]
    [record] = await signed_in.audit("token.revoke")
    assert record.actor == "admin_ui"


async def test_the_tokens_page_limits_form_needs_the_csrf_token_and_is_audited_as_the_admin_ui(
    signed_in: Admin,
) -> None:
    """What the Tokens page's limits form sends: the fields it changed, an emptied one as null."""
    csrf = {"X-CSRF-Token": signed_in.csrf_token}
    project = await (await signed_in.client.post("/manage/projects", json=PROJECT, headers=csrf)).json()
    body = {"project_id": project["id"], "max_requests": 5}
    token = await (await signed_in.client.post("/manage/tokens", json=body, headers=csrf)).json()
    limits = {"name": "web app", "max_tokens": 20, "max_cost_usd": 1.5, "allowed_models": ["gpt-4o*"]}
    changes = {**limits, "max_requests": None}
    refused = await signed_in.client.patch(f"/manage/tokens/{token['id']}", json=changes)
    assert refused.status == 403
    response = await signed_in.client.patch(f"/manage/tokens/{token['id']}", json=changes, headers=csrf)
    assert response.status == 200, await response.text()
    shown = await response.json()
    assert {k: shown[k] for k in limits} == limits and shown["max_requests"] is None
    records = await signed_in.audit("token.update", count=2)
    assert sorted(r.result for r in records) == ["denied", "success"]  # the refused try is audited too
    [record] = [r for r in records if r.result == "success"]
    assert (record.actor, record.token_id) == ("admin_ui", token["id"])
    assert record.details is not None
    assert record.details["fields"] == [
        "allowed_models",
        "max_cost_usd",
        "max_requests",
        "max_tokens",
        "name",
    ]
    assert (record.details["max_tokens"], record.details["max_cost_usd"]) == (20, 1.5)


async def test_a_limit_the_api_refuses_comes_back_as_a_message_naming_the_field(signed_in: Admin) -> None:
    csrf = {"X-CSRF-Token": signed_in.csrf_token}
    project = await (await signed_in.client.post("/manage/projects", json=PROJECT, headers=csrf)).json()
    token = await (
        await signed_in.client.post("/manage/tokens", json={"project_id": project["id"]}, headers=csrf)
    ).json()
    response = await signed_in.client.patch(
        f"/manage/tokens/{token['id']}", json={"max_tokens": 0}, headers=csrf
    )
    assert response.status == 422
    error = (await response.json())["error"]
    assert error["param"] == "max_tokens" and ">= 1" in error["message"]
