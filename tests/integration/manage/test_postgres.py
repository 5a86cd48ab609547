"""The management API over PostgreSQL: the same answers as over SQLite for a whole lifecycle."""

from __future__ import annotations

from urllib.parse import quote

from tests.integration.manage.support import AUTH, UPSTREAM_KEY, Manage


async def test_a_project_and_token_lifecycle_over_postgres(pg_manage: Manage) -> None:
    manage = pg_manage
    project = await manage.create_project()
    assert project["api_key"] == "sk-…WXYZ"
    taken = await manage.client.post("/manage/projects", json={"name": "acme", "api_key": "k"}, headers=AUTH)
    assert (taken.status, (await taken.json())["error"]["param"]) == (409, "name")
    token = await manage.create_token(project["id"], duration_minutes=10, max_requests=2)
    assert (await manage.authority.check(token["token"])).api_key == UPSTREAM_KEY
    listed = await (
        await manage.client.get(f"/manage/tokens?project_id={project['id']}", headers=AUTH)
    ).json()
    assert [t["token"] for t in listed] == [token["token_hint"]]
    patched = await manage.client.patch(
        f"/manage/tokens/{token['id']}", json={"expires_at": "2099-01-01T00:00:00+01:00"}, headers=AUTH
    )
    assert (await patched.json())["expires_at"] == "2098-12-31T23:00:00Z"
    revoke = await manage.client.post(f"/manage/projects/{project['id']}/tokens/revoke", headers=AUTH)
    assert await revoke.json() == {"revoked_count": 1, "already_revoked_count": 0, "total_tokens": 1}
    deactivated = await manage.client.patch(
        f"/manage/projects/{project['id']}", json={"is_active": False}, headers=AUTH
    )
    assert (await deactivated.json())["deactivated_at"] is not None
    await manage.auditor.flush()
    since = quote(project["created_at"])
    audit = await (await manage.client.get(f"/manage/audit?since={since}&page_size=10", headers=AUTH)).json()
    assert [(e["action"], e["result"]) for e in audit["events"]] == [
        ("project.deactivate", "success"),
        ("token.revoke_batch", "success"),
        ("token.update", "success"),
        ("token.create", "success"),
        ("project.create", "error"),
        ("project.create", "success"),
    ]
    assert audit["total_count"] == 6
