"""Real stores for the Authority and Auditor: a SQLite file, and a private PostgreSQL schema dropped after."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from llmproxy.auth.tokens import generate_token, hash_token, token_hint
from llmproxy.store.base import Project, Store, Token
from llmproxy.store.postgres import PostgresStore
from llmproxy.store.sqlite import SqliteStore

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
KEY = os.urandom(32)  # upstream keys are encrypted at rest: the grant must still carry the plaintext


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        sqlite = SqliteStore(str(tmp_path / "db" / "llmproxy.db"), KEY)
        await sqlite.open()
        try:
            yield sqlite
        finally:
            await sqlite.close()
        return
    schema = f"test_auth_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(PG_DSN)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    postgres = PostgresStore(PG_DSN, KEY, schema=schema, pool_size=3)
    try:
        await postgres.open()
        yield postgres
    finally:
        await postgres.close()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


@pytest.fixture
def add_project(store: Store) -> Callable[..., Any]:
    async def add(**fields: Any) -> Project:
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "name": f"project-{uuid.uuid4().hex[:8]}",
            "api_key": "sk-upstream-" + uuid.uuid4().hex,
            "created_at": now,
            "updated_at": now,
        }
        values.update(fields)
        return await store.create_project(Project(**values))

    return add


@pytest.fixture
def add_token(store: Store) -> Callable[..., Any]:
    async def add(project: Project, **fields: Any) -> tuple[str, Token]:
        raw = generate_token()
        token = Token(
            id=str(uuid.uuid4()),
            project_id=project.id,
            token_hash=hash_token(raw),
            token_hint=token_hint(raw),
            created_at=datetime.now(UTC),
            **fields,
        )
        return raw, await store.create_token(token)

    return add
