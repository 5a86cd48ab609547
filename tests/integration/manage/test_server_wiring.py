"""The management API inside the whole server (``build_app``): reachable, not swallowed by the proxy's
catch-all, audited with the request id the server assigned."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from llmproxy import config
from llmproxy.server.app import build_app
from llmproxy.store.base import AuditQuery, AuditRecord, Project
from llmproxy.store.sqlite import SqliteStore
from tests.integration.manage.support import AUTH, UNDIALLABLE_URLS, UPSTREAM_KEY


@pytest.fixture
async def server(settings: config.Settings, tmp_path: Path) -> AsyncIterator[tuple[TestClient, SqliteStore]]:
    store = SqliteStore(str(tmp_path / "llm-proxy.db"), None)
    async with TestClient(TestServer(build_app(settings, store=store), host="127.0.0.1", port=0)) as client:
        yield client, store


async def audit_rows(store: SqliteStore, action: str, deadline: float = 5.0) -> list[AuditRecord]:
    """The rows for ``action`` once the server's audit writer stored at least one (polled)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline
    while True:
        rows, _ = await store.list_audit(AuditQuery(action=action))
        if rows or loop.time() > until:
            return rows
        await asyncio.sleep(0.02)


async def test_the_server_serves_the_management_api_and_audits_with_the_request_id(
    server: tuple[TestClient, SqliteStore],
) -> None:
    client, store = server
    response = await client.post(
        "/manage/projects",
        json={"name": "acme", "api_key": UPSTREAM_KEY},
        headers={**AUTH, "X-Request-ID": "req-manage-1"},
    )
    assert response.status == 201
    assert response.headers["X-Request-ID"] == "req-manage-1"
    project = await response.json()
    [row] = await audit_rows(store, "project.create")
    assert (row.request_id, row.project_id, row.actor) == ("req-manage-1", project["id"], "management_api")


async def test_an_unsupported_management_method_is_405_not_proxied(
    server: tuple[TestClient, SqliteStore],
) -> None:
    client, _ = server
    response = await client.put("/manage/tokens", json={}, headers=AUTH)
    assert response.status == 405
    assert response.headers["Allow"] == "GET, HEAD, POST"
    assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_an_unknown_management_path_is_404_not_found_not_proxied(
    server: tuple[TestClient, SqliteStore],
) -> None:
    client, _ = server
    response = await client.get("/manage/projectz", headers=AUTH)
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_the_server_refuses_management_requests_without_the_token(
    server: tuple[TestClient, SqliteStore],
) -> None:
    client, _ = server
    response = await client.get("/manage/tokens")
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthorized"
    assert "X-Request-ID" in response.headers


async def test_the_server_serves_the_openapi_document(server: tuple[TestClient, SqliteStore]) -> None:
    client, _ = server
    response = await client.get("/manage/openapi.json")
    assert response.status == 200
    assert "/manage/tokens/{id}" in (await response.json())["paths"]


@pytest.mark.parametrize("url", UNDIALLABLE_URLS)
async def test_a_project_url_already_stored_that_cannot_be_dialled_is_502_not_500(
    server: tuple[TestClient, SqliteStore], url: str
) -> None:
    client, store = server
    now = datetime.now(UTC)
    project = Project(
        id=str(uuid.uuid4()),
        name="old",
        api_key=UPSTREAM_KEY,
        upstream_base_url=url,
        created_at=now,
        updated_at=now,
    )
    await store.create_project(project)  # as a release without the write-time check could have stored it
    created = await client.post("/manage/tokens", json={"project_id": project.id}, headers=AUTH)
    token = (await created.json())["token"]
    for _ in range(2):  # the second time from the pool's memo of parsed origins, if it kept one
        response = await client.post(
            "/v1/chat/completions", json={"model": "m"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status == 502, await response.text()
        assert (await response.json())["error"]["code"] == "upstream_unavailable"
