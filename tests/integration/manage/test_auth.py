"""Every /manage/* route needs the management token; only the OpenAPI document is public."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from llmproxy import config
from llmproxy.audit import Auditor
from llmproxy.auth.authority import Authority
from llmproxy.auth.throttle import SharedAuthThrottle
from llmproxy.manage import edge
from llmproxy.manage.api import ManageAPI
from llmproxy.store.sqlite import SqliteStore
from tests.integration.manage.conftest import running
from tests.integration.manage.support import (
    AUTH,
    MANAGEMENT_TOKEN,
    UNKNOWN_ID,
    Manage,
    make_settings,
    manage_app,
)

UNAUTHORIZED = {
    "error": {
        "message": "Missing or invalid management token",
        "type": "authentication_error",
        "code": "unauthorized",
    }
}
ROUTES = [
    ("GET", "/manage/projects"),
    ("POST", "/manage/projects"),
    ("PUT", "/manage/projects"),
    ("GET", f"/manage/projects/{UNKNOWN_ID}"),
    ("PATCH", f"/manage/projects/{UNKNOWN_ID}"),
    ("DELETE", f"/manage/projects/{UNKNOWN_ID}"),
    ("POST", f"/manage/projects/{UNKNOWN_ID}/tokens/revoke"),
    ("GET", "/manage/tokens"),
    ("POST", "/manage/tokens"),
    ("GET", f"/manage/tokens/{UNKNOWN_ID}"),
    ("PATCH", f"/manage/tokens/{UNKNOWN_ID}"),
    ("DELETE", f"/manage/tokens/{UNKNOWN_ID}"),
    ("DELETE", "/manage/cache"),
    ("GET", "/manage/audit"),
    ("GET", "/manage/no-such-route"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_management_route_refuses_a_request_without_token_with_401(
    manage: Manage, method: str, path: str
) -> None:
    response = await manage.client.request(method, path, json={})
    assert response.status == 401
    assert await response.json() == UNAUTHORIZED
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer wrong-token-wrong-token-wrong",
        f"Bearer {MANAGEMENT_TOKEN}x",
        f"Bearer {MANAGEMENT_TOKEN[:-1]}",
        f"Basic {MANAGEMENT_TOKEN}",
        MANAGEMENT_TOKEN,
        "Bearer ",
        "Bearer ümlaut",
    ],
)
async def test_a_wrong_management_token_is_refused_with_401(manage: Manage, authorization: str) -> None:
    response = await manage.client.get("/manage/projects", headers={"Authorization": authorization})
    assert response.status == 401
    assert await response.json() == UNAUTHORIZED


async def test_the_bearer_scheme_is_case_insensitive(manage: Manage) -> None:
    response = await manage.client.get(
        "/manage/projects", headers={"Authorization": f"bearer {MANAGEMENT_TOKEN}"}
    )
    assert response.status == 200


async def test_the_management_token_is_compared_in_constant_time(
    manage: Manage, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = edge.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(edge.hmac, "compare_digest", spy)
    response = await manage.client.get("/manage/projects", headers={"Authorization": "Bearer nope"})
    assert response.status == 401
    assert compared == [(b"nope", MANAGEMENT_TOKEN.encode())]


async def test_an_empty_configured_management_token_refuses_everyone(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, MANAGEMENT_TOKEN="")
    store = SqliteStore(str(tmp_path / "empty.db"), None)
    await store.open()
    try:
        api = ManageAPI(
            settings.server, store, Authority(store, settings.auth), Auditor(settings.audit, None)
        )
        async with TestClient(TestServer(manage_app(api), host="127.0.0.1", port=0)) as client:
            response = await client.get("/manage/projects", headers={"Authorization": "Bearer "})
            assert response.status == 401
    finally:
        await store.close()


async def test_the_openapi_document_is_served_without_a_token(manage: Manage) -> None:
    response = await manage.client.get("/manage/openapi.json")
    assert response.status == 200
    assert (await response.json())["openapi"] == "3.1.0"


async def test_a_refused_change_is_audited_as_denied(manage: Manage) -> None:
    response = await manage.client.post("/manage/tokens", json={"project_id": UNKNOWN_ID})
    assert response.status == 401
    [row] = await manage.audit(action="token.create")
    assert (row.result, row.reason, row.actor) == ("denied", "unauthorized", "management_api")
    assert (row.method, row.path, row.client_ip) == ("POST", "/manage/tokens", "127.0.0.1")
    assert row.details == {"status": 401}


async def test_a_refused_read_is_not_audited(manage: Manage) -> None:
    response = await manage.client.get("/manage/projects")
    assert response.status == 401
    assert await manage.audit() == []


async def test_the_right_token_opens_every_read_route(manage: Manage) -> None:
    for path in ("/manage/projects", "/manage/tokens", "/manage/audit"):
        response = await manage.client.get(path, headers=AUTH)
        assert response.status == 200, path


async def test_five_wrong_management_tokens_lock_the_address_out_with_429(manage: Manage) -> None:
    for n in range(5):
        guess = await manage.client.get("/manage/projects", headers={"Authorization": f"Bearer guess-{n}"})
        assert guess.status == 401
    for headers in ({"Authorization": "Bearer guess-5"}, AUTH):  # even the right token waits now
        response = await manage.client.get("/manage/projects", headers=headers)
        assert response.status == 429
        assert await response.json() == {
            "error": {
                "message": f"Too many failed attempts: try again in {response.headers['Retry-After']} seconds",
                "type": "rate_limit_error",
                "code": "too_many_attempts",
            }
        }
        assert 1 <= int(response.headers["Retry-After"]) <= 60


async def test_the_lockout_is_audited_once_and_without_the_guesses(manage: Manage) -> None:
    guesses = [f"guess-{n}-abcdefghijklmnop" for n in range(8)]
    for guess in guesses:
        await manage.client.get("/manage/projects", headers={"Authorization": f"Bearer {guess}"})
    [row] = await manage.audit(action="manage.auth")
    assert (row.result, row.reason, row.actor) == ("denied", "too_many_attempts", "management_api")
    assert (row.client_ip, row.method, row.path) == ("127.0.0.1", "GET", "/manage/projects")
    assert row.details["failures"] == 5 and 1 <= row.details["retry_after"] <= 60
    audit_file = Path(manage.settings.audit.log_file).read_text()
    assert "too_many_attempts" in audit_file
    assert not any(guess in audit_file for guess in guesses)


async def test_the_right_token_clears_the_failures_of_its_address(manage: Manage) -> None:
    for _ in range(2):
        for n in range(4):
            guess = await manage.client.get("/manage/projects", headers={"Authorization": f"Bearer g{n}"})
            assert guess.status == 401
        assert (await manage.client.get("/manage/projects", headers=AUTH)).status == 200


async def test_requests_without_any_token_are_refused_but_not_counted(manage: Manage) -> None:
    for _ in range(10):
        assert (await manage.client.get("/manage/projects")).status == 401
    assert (await manage.client.get("/manage/projects", headers=AUTH)).status == 200


async def test_a_change_refused_during_the_lockout_is_audited_as_denied(manage: Manage) -> None:
    for n in range(5):
        await manage.client.get("/manage/projects", headers={"Authorization": f"Bearer g{n}"})
    response = await manage.client.post("/manage/projects", json={"name": "a", "api_key": "k"}, headers=AUTH)
    assert response.status == 429
    [row] = await manage.audit(action="project.create")
    assert (row.result, row.reason, row.details) == ("denied", "too_many_attempts", {"status": 429})


async def test_the_retry_after_of_a_lockout_is_exact_and_the_address_is_let_in_once_it_passed(
    settings: config.Settings, tmp_path: Path
) -> None:
    now = [1000.0]
    store = SqliteStore(str(tmp_path / "db"), None)
    async with running(settings, store, SharedAuthThrottle(store, clock=lambda: now[0])) as manage:
        for n in range(5):
            await manage.client.get("/manage/projects", headers={"Authorization": f"Bearer g{n}"})
            now[0] += 1
        locked = await manage.client.get("/manage/projects", headers=AUTH)
        assert (locked.status, locked.headers["Retry-After"]) == (429, "55")  # the first guess + 60 s
        now[0] += 54.5
        locked = await manage.client.get("/manage/projects", headers=AUTH)
        assert (locked.status, locked.headers["Retry-After"]) == (429, "1")
        now[0] += 0.5
        assert (await manage.client.get("/manage/projects", headers=AUTH)).status == 200
