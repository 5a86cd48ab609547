"""Withering tokens over the management API: shown once, bounded, revocable at once, never leaked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from llmproxy.auth.tokens import hash_token, token_hint
from llmproxy.errors import ProxyError, Refusal
from tests.integration.manage.support import AUTH, SPEND_LIMITS, UNKNOWN_ID, USAGE_TOTALS, Manage

CREATED_KEYS = {
    "id",
    "token",
    "token_hint",
    "project_id",
    "expires_at",
    "is_active",
    "max_requests",
    "rate_limit_per_minute",
    "created_at",
    *SPEND_LIMITS,
    "name",
    "metadata",
    "allowed_models",
}
LISTED_KEYS = {
    "id",
    "token",
    "project_id",
    "expires_at",
    "is_active",
    "request_count",
    "max_requests",
    "rate_limit_per_minute",
    "cache_hit_count",
    "created_at",
    "last_used_at",
    "deactivated_at",
    "status",
    *SPEND_LIMITS,
    *USAGE_TOTALS,
    "name",
    "metadata",
    "allowed_models",
}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def test_generating_a_token_answers_201_with_the_raw_token_once(manage: Manage) -> None:
    project = await manage.create_project()
    response = await manage.client.post(
        "/manage/tokens",
        json={
            "project_id": project["id"],
            "duration_minutes": 90,
            "max_requests": 5,
            "rate_limit_per_minute": 3,
        },
        headers=AUTH,
    )
    assert response.status == 201
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert set(body) == CREATED_KEYS
    raw = body["token"]
    assert raw.startswith("sk-") and len(raw) >= 35
    assert body["token_hint"] == token_hint(raw)
    assert (body["project_id"], body["max_requests"], body["rate_limit_per_minute"]) == (project["id"], 5, 3)
    assert body["is_active"] is True
    assert at(body["expires_at"]) - at(body["created_at"]) == timedelta(minutes=90)
    stored = await manage.store.get_token(body["id"])
    assert stored is not None and stored.token_hash == hash_token(raw)
    assert await manage.store.get_token_by_hash(raw) is None


async def test_a_token_without_duration_never_expires_and_has_no_limits(manage: Manage) -> None:
    project = await manage.create_project()
    token = await manage.create_token(project["id"])
    assert (token["expires_at"], token["max_requests"], token["rate_limit_per_minute"]) == (None, None, None)
    assert (await manage.authority.check(token["token"])).token_id == token["id"]


async def test_the_raw_token_never_appears_in_a_listing_or_a_get(manage: Manage) -> None:
    project = await manage.create_project()
    token = await manage.create_token(project["id"])
    listing = await manage.client.get("/manage/tokens", headers=AUTH)
    one = await manage.client.get(f"/manage/tokens/{token['id']}", headers=AUTH)
    for response in (listing, one):
        text = await response.text()
        assert token["token"] not in text
        assert hash_token(token["token"]) not in text
        assert token["token_hint"] in text
    [listed] = await listing.json()
    assert set(listed) == LISTED_KEYS
    assert listed == await one.json()
    assert listed["token"] == token["token_hint"]
    assert (listed["request_count"], listed["cache_hit_count"], listed["last_used_at"]) == (0, 0, None)


async def test_listing_tokens_filters_by_project_and_activity(manage: Manage) -> None:
    a, b = await manage.create_project("a"), await manage.create_project("b")
    a1, a2 = await manage.create_token(a["id"]), await manage.create_token(a["id"])
    b1 = await manage.create_token(b["id"])
    await manage.client.delete(f"/manage/tokens/{a1['id']}", headers=AUTH)

    async def ids(query: str) -> list[str]:
        response = await manage.client.get(f"/manage/tokens{query}", headers=AUTH)
        assert response.status == 200
        return [t["id"] for t in await response.json()]

    assert await ids("") == [a1["id"], a2["id"], b1["id"]]
    assert await ids(f"?project_id={a['id']}") == [a1["id"], a2["id"]]
    assert await ids(f"?project_id={a['id']}&active_only=true") == [a2["id"]]
    assert await ids("?active_only=1") == [a2["id"], b1["id"]]
    assert await ids(f"?project_id={UNKNOWN_ID}") == []


async def test_every_token_has_one_status_and_active_only_means_usable_now(manage: Manage) -> None:
    project = await manage.create_project()
    active = await manage.create_token(project["id"], max_requests=5)
    expired = await manage.create_token(project["id"], duration_minutes=60)
    exhausted = await manage.create_token(project["id"], max_requests=1)
    revoked = await manage.create_token(project["id"], duration_minutes=60)
    now = datetime.now(UTC)
    await manage.store.update_token(expired["id"], {"expires_at": now - timedelta(seconds=1)})
    assert await manage.store.consume_request(exhausted["id"], now)  # its one request, used
    assert (await manage.client.delete(f"/manage/tokens/{revoked['id']}", headers=AUTH)).status == 204
    await manage.store.update_token(revoked["id"], {"expires_at": now - timedelta(seconds=1)})
    wanted = {active["id"]: "active", expired["id"]: "expired", exhausted["id"]: "exhausted"}
    wanted[revoked["id"]] = "revoked"  # revoked wins over expired: it can never come back by itself

    listing = await (await manage.client.get("/manage/tokens", headers=AUTH)).json()
    assert {t["id"]: t["status"] for t in listing} == wanted
    for token_id, status in wanted.items():
        one = await (await manage.client.get(f"/manage/tokens/{token_id}", headers=AUTH)).json()
        assert one["status"] == status
    usable = await (await manage.client.get("/manage/tokens?active_only=true", headers=AUTH)).json()
    assert [t["id"] for t in usable] == [active["id"]]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("?active_only=maybe", "active_only"),
        ("?project_id=nope", "project_id"),
        ("?projectId=x", "projectId"),
    ],
)
async def test_a_bad_token_filter_is_422_naming_it(manage: Manage, query: str, param: str) -> None:
    response = await manage.client.get(f"/manage/tokens{query}", headers=AUTH)
    assert response.status == 422
    assert (await response.json())["error"]["param"] == param


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"duration_minutes": 0}, "duration_minutes"),
        ({"duration_minutes": 525601}, "duration_minutes"),
        ({"duration_minutes": "60"}, "duration_minutes"),
        ({"duration_minutes": 1.5}, "duration_minutes"),
        ({"max_requests": 0}, "max_requests"),
        ({"max_requests": -1}, "max_requests"),
        ({"rate_limit_per_minute": 0}, "rate_limit_per_minute"),
        ({"rate_limit_per_minute": True}, "rate_limit_per_minute"),
        ({"expires_in_days": 3}, "expires_in_days"),
    ],
)
async def test_a_token_field_out_of_bounds_is_422_naming_it(
    manage: Manage, extra: dict[str, object], param: str
) -> None:
    project = await manage.create_project()
    response = await manage.client.post(
        "/manage/tokens", json={"project_id": project["id"], **extra}, headers=AUTH
    )
    assert response.status == 422
    error = (await response.json())["error"]
    assert (error["code"], error["param"]) == ("invalid_field", param)
    assert await manage.store.list_tokens() == []


async def test_the_longest_duration_is_one_year(manage: Manage) -> None:
    project = await manage.create_project()
    token = await manage.create_token(project["id"], duration_minutes=525600)
    assert at(token["expires_at"]) - at(token["created_at"]) == timedelta(days=365)


async def test_a_token_for_a_malformed_project_id_is_422_and_unknown_is_404(manage: Manage) -> None:
    bad = await manage.client.post("/manage/tokens", json={"project_id": "acme"}, headers=AUTH)
    assert bad.status == 422
    assert (await bad.json())["error"] == {
        "message": "Expected a UUID - at `$.project_id`",
        "type": "invalid_request_error",
        "code": "invalid_field",
        "param": "project_id",
    }
    missing = await manage.client.post("/manage/tokens", json={}, headers=AUTH)
    assert (missing.status, (await missing.json())["error"]["param"]) == (422, "project_id")
    unknown = await manage.client.post("/manage/tokens", json={"project_id": UNKNOWN_ID}, headers=AUTH)
    assert unknown.status == 404
    assert (await unknown.json())["error"]["param"] == "project_id"


async def test_a_token_for_an_inactive_project_is_403_and_audited_as_denied(manage: Manage) -> None:
    project = await manage.create_project()
    await manage.client.patch(f"/manage/projects/{project['id']}", json={"is_active": False}, headers=AUTH)
    response = await manage.client.post("/manage/tokens", json={"project_id": project["id"]}, headers=AUTH)
    assert response.status == 403
    assert (await response.json())["error"] == {
        "message": "Cannot create tokens for an inactive project",
        "type": "permission_error",
        "code": "project_inactive",
    }
    [row] = await manage.audit(action="token.create")
    assert (row.result, row.reason) == ("denied", "project_inactive")
    assert await manage.store.list_tokens() == []


@pytest.mark.parametrize("token_id", [UNKNOWN_ID, "nope", "sk-abc"])
async def test_an_unknown_or_malformed_token_id_is_404(manage: Manage, token_id: str) -> None:
    for method, body in (("GET", None), ("PATCH", {"max_requests": 1}), ("DELETE", None)):
        response = await manage.client.request(method, f"/manage/tokens/{token_id}", json=body, headers=AUTH)
        assert response.status == 404, method
        error = (await response.json())["error"]
        assert (error["code"], error["message"]) == ("not_found", "Token not found")


async def test_patching_a_token_changes_limits_and_expiry(manage: Manage) -> None:
    project = await manage.create_project()
    token = await manage.create_token(project["id"], max_requests=10)
    expires = datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC)
    response = await manage.client.patch(
        f"/manage/tokens/{token['id']}",
        json={"max_requests": 20, "rate_limit_per_minute": 6, "expires_at": "2099-01-02T05:04:05+02:00"},
        headers=AUTH,
    )
    assert response.status == 200
    body = await response.json()
    assert (body["max_requests"], body["rate_limit_per_minute"]) == (20, 6)
    assert at(body["expires_at"]) == expires
    cleared = await manage.client.patch(
        f"/manage/tokens/{token['id']}", json={"max_requests": None, "expires_at": None}, headers=AUTH
    )
    assert (await cleared.json())["max_requests"] is None
    stored = await manage.store.get_token(token["id"])
    assert stored is not None and (stored.max_requests, stored.expires_at, stored.rate_limit_per_minute) == (
        None,
        None,
        6,
    )
    [first, second] = sorted((await manage.audit(action="token.update")), key=lambda r: r.timestamp)
    assert first.details == {
        "fields": ["expires_at", "max_requests", "rate_limit_per_minute"],
        "expires_at": expires.isoformat(),
        "max_requests": 20,
        "rate_limit_per_minute": 6,
    }
    assert second.token_id == token["id"] and second.project_id == project["id"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"expires_at": "2099-01-02T03:04:05"}, "expires_at"),
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"max_requests": 0}, "max_requests"),
        ({"is_active": 1}, "is_active"),
        ({"token": "sk-x"}, "token"),
    ],
)
async def test_a_bad_field_on_token_patch_is_422_naming_it(
    manage: Manage, body: dict[str, object], param: str
) -> None:
    project = await manage.create_project()
    token = await manage.create_token(project["id"])
    response = await manage.client.patch(f"/manage/tokens/{token['id']}", json=body, headers=AUTH)
    assert response.status == 422
    assert (await response.json())["error"]["param"] == param


async def test_patching_is_active_false_revokes_the_token_at_once(manage: Manage) -> None:
    project = await manage.create_project()
    token = await manage.create_token(project["id"])
    await manage.authority.check(token["token"])
    response = await manage.client.patch(
        f"/manage/tokens/{token['id']}", json={"is_active": False}, headers=AUTH
    )
    body = await response.json()
    assert (body["is_active"], body["deactivated_at"] is not None) == (False, True)
    with pytest.raises(ProxyError) as refused:
        await manage.authority.check(token["token"])
    assert refused.value.refusal is Refusal.TOKEN_REVOKED
    [row] = await manage.audit(action="token.revoke")
    assert row.details["fields"] == ["is_active"]


async def test_a_lowered_quota_applies_at_once(manage: Manage) -> None:
    project = await manage.create_project()
    token = await manage.create_token(project["id"])
    assert (await manage.authority.check(token["token"])).max_requests is None
    await manage.client.patch(f"/manage/tokens/{token['id']}", json={"max_requests": 1}, headers=AUTH)
    assert (await manage.authority.check(token["token"])).max_requests == 1


async def test_deleting_a_token_answers_204_twice_and_revokes_it_at_once(manage: Manage) -> None:
    project = await manage.create_project()
    token = await manage.create_token(project["id"])
    await manage.authority.check(token["token"])
    first = await manage.client.delete(f"/manage/tokens/{token['id']}", headers=AUTH)
    assert (first.status, await first.read()) == (204, b"")
    revoked = await manage.store.get_token(token["id"])
    assert revoked is not None and revoked.is_active is False and revoked.deactivated_at is not None
    with pytest.raises(ProxyError) as refused:
        await manage.authority.check(token["token"])
    assert refused.value.refusal is Refusal.TOKEN_REVOKED
    second = await manage.client.delete(f"/manage/tokens/{token['id']}", headers=AUTH)
    assert second.status == 204
    again = await manage.store.get_token(token["id"])
    assert again is not None and again.deactivated_at == revoked.deactivated_at
    rows = await manage.audit(action="token.revoke")
    assert sorted(r.details["already_revoked"] for r in rows) == [False, True]


async def test_token_changes_are_audited_without_the_raw_token(manage: Manage) -> None:
    project = await manage.create_project()
    token = await manage.create_token(project["id"], duration_minutes=5, max_requests=3)
    await manage.client.patch(
        f"/manage/tokens/{token['id']}", json={"rate_limit_per_minute": 2}, headers=AUTH
    )
    await manage.client.delete(f"/manage/tokens/{token['id']}", headers=AUTH)
    [created] = await manage.audit(action="token.create")
    assert (created.result, created.project_id, created.token_id) == ("success", project["id"], token["id"])
    assert created.details == {
        "expires_at": at(token["expires_at"]).isoformat(),
        "max_requests": 3,
        "rate_limit_per_minute": None,
    }
    everything = repr(await manage.audit())
    with open(manage.settings.audit.log_file) as log:
        everything += log.read()
    assert token["token"] not in everything
    assert hash_token(token["token"]) not in everything
    assert token["token"][3:] not in everything
