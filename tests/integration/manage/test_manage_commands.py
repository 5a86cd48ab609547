"""The `llm-proxy manage` command as a user runs it: a subprocess, configured by its environment,
against the real server app on loopback (SQLite store, fake upstream for the proxied requests)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from llmproxy.server.app import build_app
from llmproxy.store.base import Project
from llmproxy.store.sqlite import SqliteStore
from tests.e2e.conftest import free_port
from tests.fakes.upstream import FakeUpstream
from tests.integration.manage.support import MANAGEMENT_TOKEN, UPSTREAM_KEY, make_settings

LLM_PROXY = str(Path(sys.executable).parent / "llm-proxy")
WIDTH = 100


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Server:
    url: str
    store: SqliteStore
    upstream: FakeUpstream
    home: Path

    async def manage(self, *argv: str, url: str | None = None, **env: str) -> Run:
        """`llm-proxy manage ARGV` with MANAGEMENT_TOKEN and LLM_PROXY_URL in its environment."""
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "MANAGEMENT_TOKEN": MANAGEMENT_TOKEN,
            "LLM_PROXY_URL": url or self.url,
            **env,
        }
        process = await asyncio.create_subprocess_exec(
            LLM_PROXY, "manage", *argv, env=environment, cwd=self.home,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return Run(process.returncode, out.decode(), err.decode())

    async def ok(self, *argv: str) -> Any:
        """Run with --json, expect success, return the decoded answer."""
        result = await self.manage(*argv, "--json")
        assert (result.code, result.err) == (0, ""), result
        return result.json()

    async def project(self, name: str, project_id: str) -> None:
        """A project with a chosen id, made in the store (ids are random through the API)."""
        now = datetime.now(UTC)
        await self.store.create_project(
            Project(id=project_id, name=name, api_key=UPSTREAM_KEY, created_at=now, updated_at=now)
        )


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with FakeUpstream() as upstream:
        settings = make_settings(tmp_path, UPSTREAM_BASE_URL=upstream.url, HTTP_CACHE_ENABLED="true")
        store = SqliteStore(str(tmp_path / "llm-proxy.db"), None)
        app = TestServer(build_app(settings, store=store), host="127.0.0.1", port=0)
        await app.start_server()
        try:
            yield Server(str(app.make_url("")).rstrip("/"), store, upstream, tmp_path)
        finally:
            await app.close()


async def test_llm_proxy_url_names_the_server_and_the_flag_wins_over_it(server: Server) -> None:
    assert (await server.manage("project", "list")).out == "(none)\n"
    nobody = f"http://127.0.0.1:{free_port()}"
    flag = await server.manage("--manage-api-base-url", server.url, "project", "list", url=nobody)
    assert (flag.code, flag.out) == (0, "(none)\n")
    unreachable = await server.manage("project", "list", url=nobody)
    assert unreachable.code == 1
    assert unreachable.err.startswith(f"llm-proxy manage: cannot reach the management API at {nobody}: ")
    bad = await server.manage("project", "list", url="localhost:8080")
    assert (bad.code, bad.err.count("\n")) == (2, 1)
    assert "LLM_PROXY_URL" in bad.err and "Traceback" not in bad.err


async def test_a_project_is_named_by_its_name_or_a_unique_id_prefix(server: Server) -> None:
    await server.project("acme", "aaaa1111-0000-4000-8000-000000000001")
    await server.project("beta", "aaaa2222-0000-4000-8000-000000000002")
    assert (await server.ok("project", "get", "acme"))["name"] == "acme"
    assert (await server.ok("project", "get", "AAAA2"))["name"] == "beta"
    token = await server.ok("token", "generate", "--project", "acme", "--max-requests", "3")
    assert token["project_id"] == "aaaa1111-0000-4000-8000-000000000001"
    listed = await server.ok("token", "list", "--project-id", "aaaa1")
    assert [t["id"] for t in listed] == [token["id"]]
    assert (await server.ok("project", "update", "beta", "--name", "gamma"))["name"] == "gamma"
    audit = await server.ok("audit", "list", "--project", "gamma")
    assert [e["action"] for e in audit["events"]] == ["project.update"]

    ambiguous = await server.manage("project", "get", "aaaa")
    assert (ambiguous.code, ambiguous.out, ambiguous.err.count("\n")) == (2, "", 1)
    assert ambiguous.err.startswith("llm-proxy manage: 'aaaa' is ambiguous: it matches 2 projects")
    unknown = await server.manage("token", "generate", "--project", "nope")
    assert (unknown.code, unknown.err) == (
        1,
        "llm-proxy manage: no project named or with an id starting with 'nope'\n",
    )


async def test_token_update_changes_limits_and_expiry_and_removes_them_with_none(server: Server) -> None:
    project = await server.ok("project", "create", "--name", "acme", "--api-key", UPSTREAM_KEY)
    token = await server.ok("token", "generate", "--project", "acme")
    before = datetime.now(UTC)
    changed = await server.ok(
        "token", "update", token["id"][:8], "--max-requests", "5", "--rate-limit-per-minute", "2",
        "--duration-minutes", "30",
    )  # fmt: skip
    assert (changed["max_requests"], changed["rate_limit_per_minute"]) == (5, 2)
    expires = datetime.fromisoformat(changed["expires_at"])
    assert before + timedelta(minutes=29) < expires < datetime.now(UTC) + timedelta(minutes=31)
    at = await server.ok("token", "update", token["id"], "--expires-at", "2031-01-02T03:04:05Z")
    assert at["expires_at"] == "2031-01-02T03:04:05Z" and at["max_requests"] == 5  # the rest stays
    cleared = await server.ok(
        "token", "update", token["id"], "--max-requests", "none", "--expires-at", "never"
    )
    assert (cleared["max_requests"], cleared["expires_at"], cleared["rate_limit_per_minute"]) == (
        None,
        None,
        2,
    )
    nothing = await server.manage("token", "update", token["id"])
    assert (nothing.code, nothing.err.startswith("llm-proxy manage: nothing to update")) == (2, True)
    stored = await server.store.get_token(token["id"])
    assert stored is not None and stored.project_id == project["id"] and stored.max_requests is None


async def test_project_deactivate_and_activate(server: Server) -> None:
    await server.ok("project", "create", "--name", "acme", "--api-key", UPSTREAM_KEY)
    token = await server.ok("token", "generate", "--project", "acme")
    off = await server.manage("project", "deactivate", "acme", "--revoke-tokens")
    assert off.code == 0 and "is_active" in off.out and "no" in off.out.split("is_active")[1].split()[0]
    assert (await server.ok("token", "get", token["id"]))["status"] == "revoked"
    assert (await server.ok("project", "activate", "acme"))["is_active"] is True
    actions = [e["action"] for e in (await server.ok("audit", "list"))["events"]]
    assert actions[:3] == ["project.update", "token.revoke_batch", "project.deactivate"]


async def test_audit_list_filters_and_pages(server: Server) -> None:
    await server.ok("project", "create", "--name", "acme", "--api-key", UPSTREAM_KEY)
    for _ in range(3):
        await server.ok("token", "generate", "--project", "acme")
    page = await server.ok("audit", "list", "--action", "token.create", "--page-size", "2", "--since", "1h")
    assert (page["total_count"], page["total_pages"], len(page["events"])) == (3, 2, 2)
    assert await server.ok("audit", "list", "--until", "2h") == {
        "events": [], "page": 1, "page_size": 50, "total_count": 0, "total_pages": 0,
    }  # fmt: skip
    shown = await server.manage("audit", "list", "--result", "success", "--page-size", "2")
    header, *rows, footer = shown.out.splitlines()
    assert header.split()[:5] == ["TIME", "(UTC)", "ACTION", "RESULT", "REASON"]
    assert len(rows) == 2 and all("token.create" in row for row in rows)
    assert footer == "page 1 of 2, 4 events; --page 2 for more"


async def test_cache_purge_deletes_the_cached_responses(server: Server) -> None:
    await server.ok("project", "create", "--name", "acme", "--api-key", UPSTREAM_KEY)
    token = await server.ok("token", "generate", "--project", "acme")
    headers = {"Authorization": f"Bearer {token['token']}", "Cache-Control": "max-age=60"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as client:
        for expected in ("miss", "hit"):
            async with client.post(f"{server.url}/v1/chat/completions", json=body, headers=headers) as r:
                assert (r.status, r.headers["X-PROXY-CACHE"]) == (200, expected)
    other = await server.manage("cache", "purge", "--prefix", "no-such-project")
    assert (other.code, other.out) == (0, "Purged 0 cached responses under 'no-such-project'\n")
    purged = await server.manage("cache", "purge")
    assert (purged.code, purged.out) == (0, "Purged 1 cached responses\n")
    assert await server.ok("cache", "purge") == {"deleted": 0}


async def test_token_status_is_the_api_s_and_active_only_means_usable_now(server: Server) -> None:
    await server.ok("project", "create", "--name", "acme", "--api-key", UPSTREAM_KEY)
    usable = await server.ok("token", "generate", "--project", "acme", "--duration-minutes", "60")
    expired = await server.ok("token", "generate", "--project", "acme", "--duration-minutes", "60")
    exhausted = await server.ok("token", "generate", "--project", "acme", "--max-requests", "1")
    await server.store.update_token(expired["id"], {"expires_at": datetime.now(UTC) - timedelta(seconds=1)})
    assert await server.store.consume_request(exhausted["id"], datetime.now(UTC))

    got = await server.manage("token", "get", expired["id"][:8])
    assert "status                 expired" in got.out.splitlines()
    listed = (await server.manage("token", "list")).out.splitlines()
    statuses = {line.split()[0]: line.split()[3] for line in listed[1:]}
    assert statuses == {
        usable["id"][:8]: "active",
        expired["id"][:8]: "expired",
        exhausted["id"][:8]: "exhausted",
    }
    active = await server.ok("token", "list", "--active-only")
    assert [t["id"] for t in active] == [usable["id"]]


async def test_tables_fit_100_columns_and_wide_shows_everything(server: Server) -> None:
    long_url = "https://upstream.example.com/" + "very-long-path/" * 8
    project = await server.ok(
        "project", "create", "--name", "A project with a long descriptive name " * 3, "--api-key", UPSTREAM_KEY,
        "--upstream-base-url", long_url,
    )  # fmt: skip
    token = await server.ok("token", "generate", "--project", project["id"], "--max-requests", "1000000",
                            "--rate-limit-per-minute", "1000000", "--duration-minutes", "60")  # fmt: skip
    for command in (("project", "list"), ("token", "list"), ("audit", "list")):
        narrow = (await server.manage(*command)).out.splitlines()
        assert max(len(line) for line in narrow) <= WIDTH, (command, narrow)
        wide = (await server.manage(*command, "--wide")).out
        assert project["id"] in wide
    token_row = (await server.manage("token", "list")).out.splitlines()[1].split()
    assert token_row[:6] == [
        token["id"][:8],
        project["id"][:8],
        token["token_hint"],
        "active",
        "0/1000000",
        "1000000",
    ]
    assert long_url.rstrip("/") in (await server.manage("project", "list", "--wide")).out
    assert token["id"] in (await server.manage("token", "list", "--wide")).out
