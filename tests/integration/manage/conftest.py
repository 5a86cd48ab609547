"""Fixtures for the management API: a real SqliteStore, Authority and Auditor behind the server's own
middleware, on a loopback TestServer. ``manage`` exposes the parts so tests can look behind the API."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from llmproxy import config
from llmproxy.audit import Auditor
from llmproxy.auth.authority import Authority
from llmproxy.auth.throttle import SharedAuthThrottle
from llmproxy.manage.api import ManageAPI
from llmproxy.server.app import build_app
from llmproxy.store.base import Store
from llmproxy.store.postgres import PostgresStore
from llmproxy.store.sqlite import SqliteStore
from tests.integration.manage.support import Cli, Manage, make_settings, manage_app

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def settings(tmp_path: Path) -> config.Settings:
    return make_settings(tmp_path)


@asynccontextmanager
async def running(
    settings: config.Settings, store: Store, throttle: SharedAuthThrottle | None = None
) -> AsyncIterator[Manage]:
    """The management API over ``store`` (opened here, closed after), with a purge_cache that counts."""
    await store.open()
    authority = Authority(store, settings.auth)
    auditor = Auditor(settings.audit, store)
    purged: list[str | None] = []

    async def purge_cache(prefix: str | None) -> int:
        purged.append(prefix)
        return 7

    api = ManageAPI(settings.server, store, authority, auditor, purge_cache=purge_cache, throttle=throttle)
    writer = asyncio.get_running_loop().create_task(auditor.run())
    try:
        async with TestClient(TestServer(manage_app(api), host="127.0.0.1", port=0)) as client:
            yield Manage(client, store, authority, auditor, settings, purged)
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await auditor.flush()
        await store.close()


@pytest.fixture
async def manage(settings: config.Settings, tmp_path: Path) -> AsyncIterator[Manage]:
    async with running(settings, SqliteStore(str(tmp_path / "llm-proxy.db"), None)) as manage:
        yield manage


@pytest.fixture
async def pg_manage(settings: config.Settings) -> AsyncIterator[Manage]:
    """The same over PostgreSQL, in a schema of its own that is dropped afterwards."""
    schema = f"test_manage_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(PG_DSN)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        async with running(settings, PostgresStore(PG_DSN, None, schema=schema, pool_size=3)) as manage:
            yield manage
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


@pytest.fixture
async def cli(settings: config.Settings, tmp_path: Path) -> AsyncIterator[Cli]:
    """``llm-proxy manage`` against a whole server (``build_app``) on a SQLite file."""
    store = SqliteStore(str(tmp_path / "llm-proxy.db"), None)
    server = TestServer(build_app(settings, store=store), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield Cli(str(server.make_url("")).rstrip("/"), store)
    finally:
        await server.close()
