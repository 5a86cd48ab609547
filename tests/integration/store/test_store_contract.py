"""The Store contract for projects, tokens and counters, run on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from llmproxy.errors import StoreUnavailable
from llmproxy.store.base import TokenUsage

NOW = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


# -- migrations and lifecycle


async def test_migrate_applies_every_migration_once_and_then_nothing(backend):
    store = backend.make()
    assert await store.migrate() == ["0001_initial", "0002_admin_sessions", "0003_spend"]
    assert await store.migrate() == []
    assert await backend.fetch_raw("SELECT name FROM schema_migrations ORDER BY name") == [
        ("0001_initial",),
        ("0002_admin_sessions",),
        ("0003_spend",),
    ]


async def test_a_second_instance_on_a_migrated_database_applies_nothing(backend):
    await backend.opened()
    assert await backend.make().migrate() == []


async def test_two_instances_migrating_at_once_apply_the_migrations_exactly_once(backend):
    first, second = backend.make(), backend.make()
    results = await asyncio.gather(first.migrate(), second.migrate())
    assert sorted(results) == [[], ["0001_initial", "0002_admin_sessions", "0003_spend"]]


async def test_ping_answers_on_an_open_store(store):
    await store.ping()


async def test_a_closed_store_raises_store_unavailable(backend):
    store = await backend.opened()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.get_project("anything")


# -- projects


async def test_created_project_reads_back_equal(store, new_project):
    project = new_project(upstream_base_url="https://llm.example/v1")
    created = await store.create_project(project)
    assert created == project
    assert await store.get_project(project.id) == project
    assert await store.list_projects() == [project]


async def test_timestamps_come_back_timezone_aware_in_utc(store, new_project):
    plus_two = timezone(timedelta(hours=2))
    project = new_project(created_at=NOW.astimezone(plus_two), updated_at=NOW.replace(tzinfo=None))
    await store.create_project(project)
    read = await store.get_project(project.id)
    assert read.created_at == NOW and read.created_at.tzinfo == UTC
    assert read.updated_at == NOW and read.updated_at.tzinfo == UTC


async def test_unknown_project_is_none(store):
    assert await store.get_project("no-such-project") is None
    assert await store.update_project("no-such-project", {"name": "x"}) is None


async def test_duplicate_project_name_is_refused_with_value_error_name(store, new_project):
    await store.create_project(new_project(name="shared"))
    with pytest.raises(ValueError) as refused:
        await store.create_project(new_project(name="shared"))
    assert refused.value.args == ("name",)
    assert len(await store.list_projects()) == 1


async def test_projects_are_listed_oldest_first(store, new_project):
    newer = await store.create_project(new_project(created_at=LATER))
    older = await store.create_project(new_project(created_at=NOW))
    assert [p.id for p in await store.list_projects()] == [older.id, newer.id]


async def test_update_project_sets_the_given_columns_and_moves_updated_at(store, new_project):
    project = await store.create_project(new_project())
    updated = await store.update_project(
        project.id,
        {"name": "renamed", "is_active": False, "deactivated_at": LATER, "upstream_base_url": None},
    )
    assert (updated.name, updated.is_active, updated.deactivated_at) == ("renamed", False, LATER)
    assert updated.updated_at > project.updated_at
    assert await store.get_project(project.id) == updated


async def test_update_project_to_a_taken_name_is_refused_and_changes_nothing(store, new_project):
    await store.create_project(new_project(name="taken"))
    project = await store.create_project(new_project(name="mine"))
    with pytest.raises(ValueError) as refused:
        await store.update_project(project.id, {"name": "taken", "is_active": False})
    assert refused.value.args == ("name",)
    assert await store.get_project(project.id) == project


async def test_update_project_refuses_a_column_outside_the_allow_list(store, new_project):
    project = await store.create_project(new_project())
    with pytest.raises(TypeError):
        await store.update_project(project.id, {"id = 'x', name": "evil"})
    with pytest.raises(TypeError):
        await store.update_project(project.id, {"created_at": LATER})
    assert await store.get_project(project.id) == project


# -- tokens


async def test_created_token_reads_back_by_id_and_by_hash(store, new_project, new_token):
    project = await store.create_project(new_project())
    token = new_token(project.id, expires_at=LATER, max_requests=10, rate_limit_per_minute=60)
    assert await store.create_token(token) == token
    assert await store.get_token(token.id) == token
    assert await store.get_token_by_hash(token.token_hash) == token
    assert await store.get_token_by_hash("0" * 64) is None
    assert await store.get_token("no-such-token") is None


async def test_token_of_an_unknown_project_is_refused_with_value_error(store, new_token):
    with pytest.raises(ValueError) as refused:
        await store.create_token(new_token("no-such-project"))
    assert refused.value.args == ("project_id",)


async def test_duplicate_token_hash_is_refused_with_value_error(store, new_project, new_token):
    project = await store.create_project(new_project())
    await store.create_token(new_token(project.id, token_hash="a" * 64))
    with pytest.raises(ValueError) as refused:
        await store.create_token(new_token(project.id, token_hash="a" * 64))
    assert refused.value.args == ("token_hash",)


async def test_list_tokens_filters_by_project_and_activity(store, new_project, new_token):
    a = await store.create_project(new_project())
    b = await store.create_project(new_project())
    a_live = await store.create_token(new_token(a.id, created_at=NOW))
    a_revoked = await store.create_token(new_token(a.id, created_at=LATER, is_active=False))
    b_live = await store.create_token(new_token(b.id))
    assert {t.id for t in await store.list_tokens()} == {a_live.id, a_revoked.id, b_live.id}
    assert [t.id for t in await store.list_tokens(a.id)] == [a_live.id, a_revoked.id]
    assert [t.id for t in await store.list_tokens(a.id, active_only=True)] == [a_live.id]
    assert {t.id for t in await store.list_tokens(active_only=True)} == {a_live.id, b_live.id}
    assert await store.list_tokens("no-such-project") == []


async def test_update_token_sets_the_given_columns(store, new_project, new_token):
    project = await store.create_project(new_project())
    token = await store.create_token(new_token(project.id))
    updated = await store.update_token(
        token.id, {"max_requests": 3, "rate_limit_per_minute": 5, "expires_at": LATER, "is_active": False}
    )
    assert (updated.max_requests, updated.rate_limit_per_minute, updated.expires_at) == (3, 5, LATER)
    assert updated.is_active is False
    assert await store.get_token(token.id) == updated
    assert await store.update_token("no-such-token", {"max_requests": 1}) is None


async def test_update_token_refuses_counters_and_unknown_columns(store, new_project, new_token):
    project = await store.create_project(new_project())
    token = await store.create_token(new_token(project.id))
    for column in ("request_count", "token_hash", "project_id", "bogus"):
        with pytest.raises(TypeError):
            await store.update_token(token.id, {column: 0})
    assert await store.get_token(token.id) == token


async def test_revoke_project_tokens_counts_revoked_already_revoked_and_total(store, new_project, new_token):
    project = await store.create_project(new_project())
    other = await store.create_project(new_project())
    live = [await store.create_token(new_token(project.id)) for _ in range(2)]
    await store.create_token(new_token(project.id, is_active=False, deactivated_at=NOW))
    bystander = await store.create_token(new_token(other.id))

    assert await store.revoke_project_tokens(project.id, LATER) == (2, 1, 3)
    for token in live:
        revoked = await store.get_token(token.id)
        assert (revoked.is_active, revoked.deactivated_at) == (False, LATER)
    assert await store.get_token(bystander.id) == bystander
    assert await store.revoke_project_tokens(project.id, LATER) == (0, 3, 3)
    assert await store.revoke_project_tokens("no-such-project", LATER) == (0, 0, 0)


# -- counters


async def test_consume_request_stops_at_max_requests(store, new_project, new_token):
    project = await store.create_project(new_project())
    token = await store.create_token(new_token(project.id, max_requests=2))
    assert [await store.consume_request(token.id, LATER) for _ in range(3)] == [True, True, False]
    counted = await store.get_token(token.id)
    assert (counted.request_count, counted.last_used_at) == (2, LATER)


async def test_concurrent_consume_request_never_exceeds_the_quota(store, new_project, new_token):
    project = await store.create_project(new_project())
    token = await store.create_token(new_token(project.id, max_requests=5))
    granted = await asyncio.gather(*(store.consume_request(token.id, LATER) for _ in range(20)))
    assert granted.count(True) == 5
    assert (await store.get_token(token.id)).request_count == 5


async def test_consume_request_refuses_revoked_and_unknown_tokens(store, new_project, new_token):
    project = await store.create_project(new_project())
    revoked = await store.create_token(new_token(project.id, is_active=False))
    assert await store.consume_request(revoked.id, LATER) is False
    assert (await store.get_token(revoked.id)).request_count == 0
    assert await store.consume_request("no-such-token", LATER) is False


async def test_consume_request_always_counts_an_unlimited_token(store, new_project, new_token):
    project = await store.create_project(new_project())
    token = await store.create_token(new_token(project.id, max_requests=None))
    assert all([await store.consume_request(token.id, LATER) for _ in range(4)])
    assert (await store.get_token(token.id)).request_count == 4


async def test_add_usage_adds_counters_and_keeps_the_latest_use(store, new_project, new_token):
    project = await store.create_project(new_project())
    one = await store.create_token(new_token(project.id))
    two = await store.create_token(new_token(project.id, last_used_at=LATER))
    await store.add_usage(
        [
            TokenUsage(one.id, requests=2, cache_hits=1, last_used_at=NOW),
            TokenUsage(one.id, requests=1, cache_hits=0, last_used_at=LATER),
            TokenUsage(two.id, requests=0, cache_hits=3, last_used_at=NOW),  # older than what is stored
            TokenUsage("no-such-token", requests=5),
        ]
    )
    await store.add_usage([])
    first, second = await store.get_token(one.id), await store.get_token(two.id)
    assert (first.request_count, first.cache_hit_count, first.last_used_at) == (3, 1, LATER)
    assert (second.request_count, second.cache_hit_count, second.last_used_at) == (0, 3, LATER)


async def test_add_usage_without_a_time_keeps_last_used_at(store, new_project, new_token):
    project = await store.create_project(new_project())
    token = await store.create_token(new_token(project.id, last_used_at=NOW))
    await store.add_usage([TokenUsage(token.id, requests=1)])
    assert (await store.get_token(token.id)).last_used_at == NOW
