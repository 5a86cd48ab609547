"""The Store contract for usage accounting, on SQLite and PostgreSQL: one transaction adds counters, totals
and daily rows by increments, reads back watched totals, reports by group, and forgets old days."""

from __future__ import annotations

import asyncio
from datetime import date

import pytest

from llmproxy.store.base import SpendTotal, TokenUsage, UsageQuery, UsageRow

DAY = date(2026, 3, 4)
NEXT = date(2026, 3, 5)


def row(project: str, token: str, *, day: date = DAY, model: str = "gpt-4o-mini", **sums: float) -> UsageRow:
    values = {"requests": 1, "prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.25, **sums}
    return UsageRow(day=day, project_id=project, token_id=token, model=model, **values)  # type: ignore[arg-type]


async def test_new_fields_of_tokens_and_projects_are_stored_and_read_back(store, new_project, new_token):
    project = await store.create_project(new_project(max_tokens=1000, max_cost_usd=2.5, tokens_per_minute=90))
    token = await store.create_token(
        new_token(
            project.id,
            name="ci bot",
            metadata={"team": "search", "n": 3},
            max_tokens=100,
            max_cost_usd=0.5,
            tokens_per_minute=60,
            allowed_models=["gpt-4o*", "o3"],
        )
    )
    got, got_project = await store.get_token(token.id), await store.get_project(project.id)
    assert (got.name, got.metadata, got.allowed_models) == (
        "ci bot",
        {"team": "search", "n": 3},
        ["gpt-4o*", "o3"],
    )
    assert (got.max_tokens, got.max_cost_usd, got.tokens_per_minute) == (100, 0.5, 60)
    assert (got.prompt_tokens, got.completion_tokens, got.cached_tokens, got.cost_usd) == (0, 0, 0, 0.0)
    assert (got_project.max_tokens, got_project.max_cost_usd, got_project.tokens_per_minute) == (
        1000,
        2.5,
        90,
    )


async def test_limits_and_metadata_can_be_changed_and_removed(store, new_project, new_token):
    project = await store.create_project(new_project())
    token = await store.create_token(new_token(project.id))
    changed = await store.update_token(
        token.id, {"max_tokens": 7, "allowed_models": ["a*"], "metadata": {"k": "v"}, "name": "n"}
    )
    assert (changed.max_tokens, changed.allowed_models, changed.metadata, changed.name) == (
        7,
        ["a*"],
        {"k": "v"},
        "n",
    )
    cleared = await store.update_token(
        token.id, {"max_tokens": None, "allowed_models": None, "metadata": None}
    )
    assert (cleared.max_tokens, cleared.allowed_models, cleared.metadata) == (None, None, None)
    updated = await store.update_project(project.id, {"max_cost_usd": 1.5, "tokens_per_minute": 10})
    assert (updated.max_cost_usd, updated.tokens_per_minute, updated.max_tokens) == (1.5, 10, None)


async def test_add_usage_adds_totals_daily_rows_and_counters_in_one_call(store, new_project, new_token):
    project = await store.create_project(new_project())
    one = await store.create_token(new_token(project.id))
    two = await store.create_token(new_token(project.id))
    totals = await store.add_usage(
        [TokenUsage(one.id, requests=2)],
        [
            row(project.id, one.id),
            row(project.id, one.id, cached_tokens=4),
            row(project.id, one.id, model="o3", cost_usd=1.0),
            row(project.id, two.id, day=NEXT, unpriced_requests=1, cost_usd=0.0, estimated_requests=1),
        ],
        watch_tokens=[one.id, two.id, "no-such-token"],
        watch_projects=[project.id],
    )
    assert totals.tokens == {one.id: SpendTotal(45, 1.5), two.id: SpendTotal(15, 0.0)}
    assert totals.projects == {project.id: SpendTotal(60, 1.5)}
    first = await store.get_token(one.id)
    assert (first.request_count, first.prompt_tokens, first.completion_tokens, first.cached_tokens) == (
        2,
        30,
        15,
        4,
    )
    assert first.cost_usd == pytest.approx(1.5)
    stored = await store.get_project(project.id)
    assert (stored.prompt_tokens, stored.completion_tokens, stored.cached_tokens) == (40, 20, 4)
    by_model = await store.usage_report(UsageQuery(group_by="model"))
    assert [(g.key, g.requests, g.prompt_tokens, g.cost_usd) for g in by_model] == [
        ("gpt-4o-mini", 3, 30, 0.5),
        ("o3", 1, 10, 1.0),
    ]
    by_day = await store.usage_report(UsageQuery(group_by="day"))
    assert [(g.key, g.requests, g.unpriced_requests, g.estimated_requests) for g in by_day] == [
        ("2026-03-04", 3, 0, 0),
        ("2026-03-05", 1, 1, 1),
    ]


async def test_a_second_flush_adds_to_the_same_daily_row(store, new_project, new_token):
    project = await store.create_project(new_project())
    token = await store.create_token(new_token(project.id))
    for _ in range(3):
        await store.add_usage([], [row(project.id, token.id)])
    [group] = await store.usage_report(UsageQuery(group_by="token"))
    assert (group.key, group.project_id, group.requests, group.prompt_tokens) == (token.id, project.id, 3, 30)
    assert group.cost_usd == pytest.approx(0.75)


async def test_concurrent_flushes_of_two_instances_add_up(backend, new_project, new_token):
    first, second = await backend.opened(), await backend.opened()
    project = await first.create_project(new_project())
    tokens = [await first.create_token(new_token(project.id)) for _ in range(3)]

    async def flushes(store, order):
        for _ in range(10):
            await store.add_usage(
                [TokenUsage(t.id, requests=1) for t in order], [row(project.id, t.id) for t in order]
            )

    await asyncio.gather(flushes(first, tokens), flushes(second, list(reversed(tokens))))
    for token in tokens:
        got = await first.get_token(token.id)
        assert (got.request_count, got.prompt_tokens, got.completion_tokens) == (20, 200, 100)
    [group] = await first.usage_report(UsageQuery(group_by="project"))
    assert (group.requests, group.prompt_tokens) == (60, 600)


async def test_the_report_filters_by_ids_model_and_days(store, new_project, new_token):
    a, b = await store.create_project(new_project()), await store.create_project(new_project())
    ta, tb = await store.create_token(new_token(a.id)), await store.create_token(new_token(b.id))
    await store.add_usage(
        [],
        [row(a.id, ta.id), row(a.id, ta.id, day=NEXT, model="o3"), row(b.id, tb.id, day=NEXT)],
    )

    async def keys(**query):
        return [(g.key, g.requests) for g in await store.usage_report(UsageQuery(**query))]

    assert await keys(group_by="project", project_id=a.id) == [(a.id, 2)]
    assert await keys(group_by="day", token_id=tb.id) == [("2026-03-05", 1)]
    assert await keys(group_by="model", since=NEXT) == [("gpt-4o-mini", 1), ("o3", 1)]
    assert await keys(group_by="model", until=DAY) == [("gpt-4o-mini", 1)]
    assert await keys(group_by="token", model="o3") == [(ta.id, 1)]
    assert await keys(group_by="day", project_id="nobody") == []


async def test_retention_forgets_days_before_the_cutoff_only(store, new_project, new_token):
    project = await store.create_project(new_project())
    token = await store.create_token(new_token(project.id))
    await store.add_usage([], [row(project.id, token.id), row(project.id, token.id, day=NEXT)])
    assert await store.delete_usage_before(NEXT) == 1
    assert [g.key for g in await store.usage_report(UsageQuery())] == ["2026-03-05"]
    assert (await store.get_token(token.id)).prompt_tokens == 20  # lifetime totals stay


async def test_watching_alone_reads_totals_without_writing(store, new_project, new_token):
    project = await store.create_project(new_project(max_tokens=5))
    token = await store.create_token(new_token(project.id))
    totals = await store.add_usage([], watch_tokens=[token.id], watch_projects=[project.id])
    assert (totals.tokens, totals.projects) == (
        {token.id: SpendTotal(0, 0.0)},
        {project.id: SpendTotal(0, 0.0)},
    )
