"""Fixtures for the store contract: every test runs on a SQLite file and on a private PostgreSQL schema.

``backend`` makes stores (unopened; closed at teardown) and reads raw rows on its own connection, so a
test can check what really lies in the database, not only what the store says.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pytest

from llmproxy.store.base import AuditRecord, Project, Store, Token
from llmproxy.store.postgres import PostgresStore
from llmproxy.store.sqlite import SqliteStore

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
NOW = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


@dataclass
class Backend:
    name: str
    _make: Callable[[bytes | None], Store]
    fetch_raw: Callable[[str], Awaitable[list[tuple[Any, ...]]]]
    stores: list[Store] = field(default_factory=list)
    # PostgreSQL only: the schema, the application_name of the store's connections, an admin connection.
    schema: str | None = None
    application_name: str | None = None
    admin: asyncpg.Connection | None = None

    def make(self, encryption_key: bytes | None = None) -> Store:
        store = self._make(encryption_key)
        self.stores.append(store)
        return store

    async def opened(self, encryption_key: bytes | None = None) -> Store:
        store = self.make(encryption_key)
        await store.open()
        return store


@asynccontextmanager
async def sqlite_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    path = str(tmp_path / "data" / "store.db")

    async def fetch_raw(sql: str) -> list[tuple[Any, ...]]:
        async with aiosqlite.connect(path) as db:
            return [tuple(row) for row in await db.execute_fetchall(sql)]

    backend = Backend("sqlite", lambda key: SqliteStore(path, key), fetch_raw)
    try:
        yield backend
    finally:
        for store in backend.stores:
            await store.close()


@asynccontextmanager
async def postgres_backend() -> AsyncIterator[Backend]:
    schema = f"test_store_{uuid.uuid4().hex}"
    application_name = f"llmproxy-test-{schema[-16:]}"
    admin = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema})
    await admin.execute(f'CREATE SCHEMA "{schema}"')

    async def fetch_raw(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await admin.fetch(sql)]

    def make(key: bytes | None) -> Store:
        return PostgresStore(PG_DSN, key, schema=schema, application_name=application_name, pool_size=5)

    backend = Backend(
        "postgres", make, fetch_raw, schema=schema, application_name=application_name, admin=admin
    )
    try:
        yield backend
    finally:
        for store in backend.stores:
            await store.close()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    context = sqlite_backend(tmp_path) if request.param == "sqlite" else postgres_backend()
    async with context as made:
        yield made


@pytest.fixture
async def pg_backend() -> AsyncIterator[Backend]:
    async with postgres_backend() as made:
        yield made


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.opened()


@pytest.fixture
def new_project() -> Callable[..., Project]:
    def make(**fields: Any) -> Project:
        values: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "name": f"project-{uuid.uuid4().hex[:8]}",
            "api_key": "sk-upstream-" + uuid.uuid4().hex,
            "created_at": NOW,
            "updated_at": NOW,
        }
        values.update(fields)
        return Project(**values)

    return make


@pytest.fixture
def new_token() -> Callable[..., Token]:
    def make(project_id: str, **fields: Any) -> Token:
        values: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "project_id": project_id,
            "token_hash": uuid.uuid4().hex * 2,
            "token_hint": "sk-abcd…wxyz",
            "created_at": NOW,
        }
        values.update(fields)
        return Token(**values)

    return make


@pytest.fixture
def new_audit() -> Callable[..., AuditRecord]:
    def make(**fields: Any) -> AuditRecord:
        values: dict[str, Any] = {"timestamp": NOW, "action": "token.create", "result": "success"}
        values.update(fields)
        return AuditRecord(**values)

    return make
