"""The whole server (``build_app``) with SQLite and the audit file in tmp_path, driven as a browser would:
cookies kept by the client, forms posted, the CSRF token read from the page."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from http.cookies import Morsel, SimpleCookie
from pathlib import Path

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from llmproxy import config
from llmproxy.server.app import STORE, build_app
from llmproxy.store.base import AuditQuery, AuditRecord, Store
from llmproxy.store.postgres import PostgresStore
from llmproxy.store.sqlite import SqliteStore

MANAGEMENT_TOKEN = "test-management-token-admin-0123456789"
PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
_FORM_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
_META_TOKEN = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


class Admin:
    """A running server and a browser-like client for its admin UI."""

    def __init__(self, client: TestClient, settings: config.Settings) -> None:
        self.client = client
        self.settings = settings
        self.csrf_token = ""

    async def login_form_token(self) -> str:
        page = await self.client.get("/admin/login")
        assert page.status == 200
        found = _FORM_TOKEN.search(await page.text())
        assert found, "no CSRF token in the sign-in form"
        return found.group(1)

    async def submit_login(self, token: str, **headers: str) -> ClientResponse:
        form = {"csrf_token": await self.login_form_token(), "management_token": token}
        return await self.client.post("/admin/login", data=form, allow_redirects=False, headers=headers)

    async def sign_in(self) -> None:
        """Sign in with the right token and keep the page's CSRF token for later changes."""
        response = await self.submit_login(MANAGEMENT_TOKEN)
        assert response.status == 303, await response.text()
        assert response.headers["Location"] == "/admin/projects"
        self.csrf_token = await self.page_csrf_token()

    async def page_csrf_token(self, path: str = "/admin/projects") -> str:
        page = await self.client.get(path, allow_redirects=False)
        assert page.status == 200, page.headers.get("Location")
        found = _META_TOKEN.search(await page.text())
        assert found
        return found.group(1)

    def session_cookie(self) -> str | None:
        for cookie in self.client.session.cookie_jar:
            if cookie.key == "llmproxy_admin":
                return cookie.value
        return None

    async def audit(self, action: str, count: int = 1, deadline_s: float = 10.0) -> list[AuditRecord]:
        """At least ``count`` audit rows of ``action`` in the store (written in the background)."""
        store = self.client.app[STORE]
        end = time.monotonic() + deadline_s
        while True:
            records, _ = await store.list_audit(AuditQuery(action=action, page_size=100))
            if len(records) >= count or time.monotonic() > end:
                return records
            await asyncio.sleep(0.02)


def set_cookie(response: ClientResponse, name: str) -> Morsel[str]:
    """The ``Set-Cookie`` of ``response`` for cookie ``name``, parsed."""
    for header in response.headers.getall("Set-Cookie", []):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        if name in jar:
            return jar[name]
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers.getall('Set-Cookie', [])}")


MakeAdmin = Callable[..., Awaitable[Admin]]


@pytest.fixture
async def make_admin(tmp_path: Path) -> AsyncIterator[MakeAdmin]:
    clients: list[TestClient] = []

    async def make(store: Store | None = None, **env: str) -> Admin:
        values = {
            "MANAGEMENT_TOKEN": MANAGEMENT_TOKEN,
            "DATABASE_URL": f"sqlite:///{tmp_path}/llm-proxy.db",
            "AUDIT_LOG_FILE": str(tmp_path / "audit.log"),
            "FILE_EVENT_LOG": str(tmp_path / "events.jsonl"),
            **env,
        }
        values = {k: v for k, v in values.items() if v}
        settings = config.load(env=values)
        client = TestClient(TestServer(build_app(settings, store=store), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return Admin(client, settings)

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def admin(make_admin: MakeAdmin) -> Admin:
    return await make_admin()


@pytest.fixture
async def signed_in(admin: Admin) -> Admin:
    await admin.sign_in()
    return admin


@pytest.fixture(params=["sqlite", "postgres"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A store the server opens: a SQLite file, or a PostgreSQL schema of this test's own."""
    if request.param == "sqlite":
        yield SqliteStore(str(tmp_path / "llm-proxy.db"), None)
        return
    schema = f"test_admin_{uuid.uuid4().hex}"
    yield PostgresStore(PG_DSN, None, schema=schema, pool_size=4)
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


@pytest.fixture
async def signed_in_on(any_store: Store, make_admin: MakeAdmin) -> Admin:
    """Signed in to a server on SQLite, then on PostgreSQL (the store set up first, so torn down last)."""
    admin = await make_admin(store=any_store)
    await admin.sign_in()
    return admin
