"""Cache purge, the audit log search, and the database being down."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from llmproxy.audit import Auditor
from llmproxy.auth.authority import Authority
from llmproxy.manage.api import ManageAPI
from llmproxy.store.base import AuditRecord
from llmproxy.store.sqlite import SqliteStore
from tests.integration.manage.support import AUTH, Manage, manage_app
from tests.spec import AUDIT_FIELDS


async def test_purging_the_cache_by_prefix_answers_the_count_and_is_audited(manage: Manage) -> None:
    response = await manage.client.delete("/manage/cache?prefix=llmproxy:cache:p1", headers=AUTH)
    assert response.status == 200
    assert await response.json() == {"deleted": 7}
    assert manage.purged == ["llmproxy:cache:p1"]
    [row] = await manage.audit(action="cache.purge")
    assert (row.result, row.actor) == ("success", "management_api")
    assert row.details == {"prefix": "llmproxy:cache:p1", "deleted": 7}


async def test_purging_without_prefix_purges_everything(manage: Manage) -> None:
    response = await manage.client.delete("/manage/cache", headers=AUTH)
    assert (response.status, await response.json()) == (200, {"deleted": 7})
    assert manage.purged == [None]


async def test_an_unknown_purge_parameter_is_422(manage: Manage) -> None:
    response = await manage.client.delete("/manage/cache?url=/v1/models", headers=AUTH)
    assert response.status == 422
    assert (await response.json())["error"]["param"] == "url"
    assert manage.purged == []


async def test_purging_a_disabled_cache_is_503_and_audited_as_an_error(
    tmp_path: Path, manage: Manage
) -> None:
    api = ManageAPI(manage.settings.server, manage.store, manage.authority, manage.auditor)  # no purge_cache
    async with TestClient(TestServer(manage_app(api), host="127.0.0.1", port=0)) as client:
        response = await client.delete("/manage/cache", headers=AUTH)
        body = await response.json()
    assert response.status == 503
    assert body["error"] == {
        "message": "The response cache is disabled",
        "type": "server_error",
        "code": "service_unavailable",
    }
    [row] = await manage.audit(action="cache.purge")
    assert (row.result, row.reason) == ("error", "service_unavailable")


async def test_a_failing_cache_backend_is_503_and_audited_as_an_error(manage: Manage) -> None:
    async def broken(prefix: str | None) -> int:
        raise ConnectionError("redis at 127.0.0.1:1 refused the connection")

    api = ManageAPI(
        manage.settings.server, manage.store, manage.authority, manage.auditor, purge_cache=broken
    )
    async with TestClient(TestServer(manage_app(api), host="127.0.0.1", port=0)) as client:
        response = await client.delete("/manage/cache?prefix=x", headers=AUTH)
        body = await response.json()
    assert response.status == 503
    assert body["error"]["message"] == "The response cache is unavailable"
    [row] = await manage.audit(action="cache.purge")
    assert (row.result, row.reason) == ("error", "service_unavailable")


async def _seed(
    manage: Manage, count: int, action: str = "seed.action", result: str = "success", **fields: str
) -> None:
    base = datetime(2030, 1, 1, tzinfo=UTC)
    records = [
        AuditRecord(timestamp=base + timedelta(minutes=i), action=action, result=result, **fields)  # type: ignore[arg-type]
        for i in range(count)
    ]
    await manage.store.insert_audit(records)


async def test_the_audit_log_is_paged_newest_first(manage: Manage) -> None:
    await _seed(manage, 5)
    response = await manage.client.get("/manage/audit?action=seed.action&page=2&page_size=2", headers=AUTH)
    assert response.status == 200
    body = await response.json()
    assert {k: v for k, v in body.items() if k != "events"} == {
        "page": 2,
        "page_size": 2,
        "total_count": 5,
        "total_pages": 3,
    }
    assert [e["timestamp"] for e in body["events"]] == ["2030-01-01T00:02:00Z", "2030-01-01T00:01:00Z"]
    assert all(set(e) == AUDIT_FIELDS for e in body["events"])


async def test_the_audit_log_is_filtered_by_fields_and_time(manage: Manage) -> None:
    await _seed(manage, 4, project_id="p-1", actor="tester")
    await _seed(manage, 2, action="other.action", result="denied")
    since, until = quote("2030-01-01T00:01:00Z"), quote("2030-01-01T01:02:00+01:00")
    response = await manage.client.get(
        f"/manage/audit?actor=tester&since={since}&until={until}", headers=AUTH
    )
    body = await response.json()
    assert body["total_count"] == 2
    assert [e["timestamp"] for e in body["events"]] == ["2030-01-01T00:02:00Z", "2030-01-01T00:01:00Z"]
    denied = await (await manage.client.get("/manage/audit?result=denied", headers=AUTH)).json()
    assert [e["action"] for e in denied["events"]] == ["other.action", "other.action"]
    empty = await (await manage.client.get("/manage/audit?project_id=p-2", headers=AUTH)).json()
    assert (empty["events"], empty["total_count"], empty["total_pages"]) == ([], 0, 0)


async def test_the_audit_log_shows_management_changes(manage: Manage) -> None:
    project = await manage.create_project()
    await manage.auditor.flush()
    body = await (await manage.client.get("/manage/audit?action=project.create", headers=AUTH)).json()
    [event] = body["events"]
    assert (event["project_id"], event["actor"], event["result"]) == (
        project["id"],
        "management_api",
        "success",
    )


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("page=0", "page"),
        ("page_size=0", "page_size"),
        ("page_size=501", "page_size"),
        ("page=two", "page"),
        ("since=2030-01-01T00:00:00", "since"),
        ("until=yesterday", "until"),
        ("outcome=success", "outcome"),
    ],
)
async def test_a_bad_audit_query_is_422_naming_the_parameter(manage: Manage, query: str, param: str) -> None:
    response = await manage.client.get(f"/manage/audit?{query}", headers=AUTH)
    assert response.status == 422
    assert (await response.json())["error"]["param"] == param


async def test_the_largest_audit_page_is_500(manage: Manage) -> None:
    response = await manage.client.get("/manage/audit?page_size=500", headers=AUTH)
    assert response.status == 200


async def test_a_database_outage_is_503_service_unavailable(tmp_path: Path, manage: Manage) -> None:
    store = SqliteStore(str(tmp_path / "down.db"), None)
    await store.open()
    await store.close()  # every call now raises StoreUnavailable
    auditor = Auditor(manage.settings.audit, None)
    api = ManageAPI(manage.settings.server, store, Authority(store, manage.settings.auth), auditor)
    async with TestClient(TestServer(manage_app(api), host="127.0.0.1", port=0)) as client:
        for method, path, body in (
            ("GET", "/manage/projects", None),
            ("POST", "/manage/projects", {"name": "a", "api_key": "k"}),
            ("GET", "/manage/tokens", None),
            ("GET", "/manage/audit", None),
        ):
            response = await client.request(method, path, json=body, headers=AUTH)
            assert response.status == 503, path
            error = (await response.json())["error"]
            assert (error["code"], error["type"]) == ("service_unavailable", "server_error")
            assert "down.db" not in error["message"]
