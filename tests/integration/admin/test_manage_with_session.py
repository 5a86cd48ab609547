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
