"""PostgreSQL going away: StoreUnavailable naming the database, never the password, and recovery by itself.

Only this test's own connections are terminated (matched by application_name); the server keeps running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import pytest

from llmproxy.errors import StoreUnavailable
from llmproxy.store.postgres import PostgresStore

NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
T = TypeVar("T")


async def eventually(call: Callable[[], Awaitable[T]], *, within: float = 10.0) -> T:
    """The first result of ``call`` that is not StoreUnavailable, polling until ``within`` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return await call()
        except StoreUnavailable:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def terminate_backends(pg_backend, condition: str = "TRUE") -> int:
    return await pg_backend.admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        f" WHERE application_name = $1 AND pid <> pg_backend_pid() AND {condition}",
        pg_backend.application_name,
    )


async def test_unreachable_postgres_raises_store_unavailable_without_the_password():
    store = PostgresStore("postgresql://postgres:hunter2-secret@127.0.0.1:1/test", None, connect_timeout=5)
    try:
        with pytest.raises(StoreUnavailable) as refused:
            await store.open()
        message = str(refused.value)
        assert "127.0.0.1:1/test" in message
        assert "hunter2-secret" not in message
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.get_token_by_hash("0" * 64)
    finally:
        await store.close()


async def test_store_recovers_by_itself_after_its_connections_are_terminated(pg_backend, new_project):
    store = await pg_backend.opened()
    project = await store.create_project(new_project())
    before = await pg_backend.admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", pg_backend.application_name
    )
    assert await terminate_backends(pg_backend) == len(before) >= 1

    assert await eventually(lambda: store.get_project(project.id)) == project
    after = await pg_backend.admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", pg_backend.application_name
    )
    assert after and not {r["pid"] for r in after} & {r["pid"] for r in before}


async def test_connection_terminated_mid_statement_is_store_unavailable_and_counts_nothing(
    pg_backend, new_project, new_token
):
    store = await pg_backend.opened()
    project = await store.create_project(new_project())
    token = await store.create_token(new_token(project.id, max_requests=10))

    blocker = pg_backend.admin
    async with blocker.transaction():
        # Hold the table so the store's UPDATE waits on the lock, then cut its connection under it.
        await blocker.execute("LOCK TABLE tokens IN ACCESS EXCLUSIVE MODE")
        consume = asyncio.create_task(store.consume_request(token.id, NOW))
        waiting = await eventually_waiting(pg_backend)
        assert waiting >= 1
        assert await terminate_backends(pg_backend, "wait_event_type = 'Lock'") == waiting
        with pytest.raises(StoreUnavailable) as refused:
            await consume
    assert "127.0.0.1:5432/test" in str(refused.value)

    assert await eventually(lambda: store.consume_request(token.id, NOW)) is True
    assert (await store.get_token(token.id)).request_count == 1


async def eventually_waiting(pg_backend, within: float = 10.0) -> int:
    """How many of the store's connections wait on a lock, once at least one does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        count = await pg_backend.admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
            pg_backend.application_name,
        )
        if count:
            return count
        await asyncio.sleep(0.02)
    return 0


async def test_migrations_land_in_the_configured_schema(pg_backend):
    await pg_backend.opened()
    found = await pg_backend.admin.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name",
        pg_backend.schema,
    )
    assert [r["table_name"] for r in found] == [
        "admin_sessions",
        "audit_events",
        "auth_failures",
        "projects",
        "schema_migrations",
        "tokens",
        "usage_daily",
    ]


async def test_store_creates_its_schema_when_missing(pg_backend):
    await pg_backend.admin.execute(f'DROP SCHEMA "{pg_backend.schema}" CASCADE')
    store = pg_backend.make()
    assert await store.migrate() == ["0001_initial", "0002_admin_sessions", "0003_spend"]
    await store.ping()
