"""Spend limits, names, metadata and allowed models on tokens and projects, and GET /manage/usage's filters:
set at creation, changed and removed by PATCH, shown in listings, audited, and refused with 422 when wrong."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from llmproxy.store.base import UsageRow
from tests.integration.manage.support import AUTH, Manage

LIMITS = {"max_tokens": 1000, "max_cost_usd": 2.5, "tokens_per_minute": 600}


async def test_a_token_is_created_with_name_metadata_limits_and_allowed_models(manage: Manage) -> None:
    project = await manage.create_project()
    created = await manage.create_token(
        project["id"],
        name=" ci bot ",
        metadata={"team": "search", "tier": 2},
        allowed_models=["gpt-4o*"],
        **LIMITS,
    )
    assert (created["name"], created["metadata"], created["allowed_models"]) == (
        "ci bot",
        {"team": "search", "tier": 2},
        ["gpt-4o*"],
    )
    listed = await (await manage.client.get("/manage/tokens", headers=AUTH)).json()
    [shown] = listed
    assert {k: shown[k] for k in LIMITS} == LIMITS
    assert (shown["name"], shown["metadata"], shown["allowed_models"]) == (
        "ci bot",
        {"team": "search", "tier": 2},
        ["gpt-4o*"],
    )
    assert (
        shown["prompt_tokens"],
        shown["completion_tokens"],
        shown["cached_tokens"],
        shown["cost_usd"],
    ) == (0, 0, 0, 0.0)
    [record] = await manage.audit(action="token.create")
    assert {k: record.details[k] for k in LIMITS} == LIMITS
    assert record.details["allowed_models"] == ["gpt-4o*"] and "metadata" not in record.details


async def test_patch_changes_and_removes_every_limit_of_a_token(manage: Manage) -> None:
    project = await manage.create_project()
    token = await manage.create_token(project["id"])
    path = f"/manage/tokens/{token['id']}"
    changed = await manage.client.patch(
        path,
        json={**LIMITS, "allowed_models": ["o3", "*-mini"], "name": "n", "metadata": {"a": 1}},
        headers=AUTH,
    )
    assert changed.status == 200
    body = await changed.json()
    assert ({k: body[k] for k in LIMITS}, body["allowed_models"], body["name"], body["metadata"]) == (
        LIMITS,
        ["o3", "*-mini"],
        "n",
        {"a": 1},
    )
    cleared = await (
        await manage.client.patch(
            path,
            json={**dict.fromkeys(LIMITS), "allowed_models": None, "name": None, "metadata": None},
            headers=AUTH,
        )
    ).json()
    assert [cleared[k] for k in (*LIMITS, "allowed_models", "name", "metadata")] == [None] * 6
    stored = await manage.store.get_token(token["id"])
    assert stored is not None and (stored.max_tokens, stored.allowed_models) == (None, None)
    first, _ = await manage.audit(action="token.update")  # newest first
    assert set(first.details["fields"]) == {*LIMITS, "allowed_models", "name", "metadata"}


async def test_a_project_is_created_and_patched_with_spend_limits(manage: Manage) -> None:
    project = await manage.create_project(**LIMITS)
    assert {k: project[k] for k in LIMITS} == LIMITS
    assert (project["prompt_tokens"], project["cost_usd"]) == (0, 0.0)
    path = f"/manage/projects/{project['id']}"
    patched = await (
        await manage.client.patch(path, json={"max_cost_usd": None, "max_tokens": 5}, headers=AUTH)
    ).json()
    assert (patched["max_cost_usd"], patched["max_tokens"], patched["tokens_per_minute"]) == (None, 5, 600)
    [record] = await manage.audit(action="project.update")
    assert record.details["fields"] == ["max_cost_usd", "max_tokens"] and record.details["max_tokens"] == 5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", "many"),
        ("max_cost_usd", -1),
        ("tokens_per_minute", 0),
        ("allowed_models", "gpt-4o"),
        ("allowed_models", ["has space"]),
        ("allowed_models", [""]),
        ("allowed_models", ["m"] * 101),
        ("name", "   "),
        ("metadata", ["not", "an", "object"]),
        ("metadata", {"big": "x" * 5000}),
        ("metadata", {str(n): n for n in range(65)}),
    ],
)
async def test_a_bad_limit_is_422_naming_the_field(manage: Manage, field: str, value: Any) -> None:
    project = await manage.create_project()
    response = await manage.client.post(
        "/manage/tokens", json={"project_id": project["id"], field: value}, headers=AUTH
    )
    assert response.status == 422, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == "invalid_field" and error.get("param", "").split("[")[0] == field
    token = await manage.create_token(project["id"])
    patched = await manage.client.patch(f"/manage/tokens/{token['id']}", json={field: value}, headers=AUTH)
    assert patched.status == 422


async def test_the_usage_report_sums_the_daily_rows_by_the_grouping_asked(manage: Manage) -> None:
    project = await manage.create_project()
    token = await manage.create_token(project["id"])
    rows = [
        UsageRow(
            day=date(2026, 1, 1),
            project_id=project["id"],
            token_id=token["id"],
            model="gpt-4o-mini",
            requests=2,
            prompt_tokens=10,
            completion_tokens=4,
            cost_usd=0.5,
        ),
        UsageRow(
            day=date(2026, 1, 2),
            project_id=project["id"],
            token_id=token["id"],
            model="mystery",
            requests=1,
            prompt_tokens=3,
            completion_tokens=1,
            unpriced_requests=1,
        ),
    ]
    await manage.store.add_usage([], rows)

    async def report(**query: str) -> dict[str, Any]:
        response = await manage.client.get("/manage/usage", params=query, headers=AUTH)
        assert response.status == 200, await response.text()
        return await response.json()

    by_model = await report(group_by="model")
    assert [(g["key"], g["requests"], g["total_tokens"], g["cost_usd"]) for g in by_model["groups"]] == [
        ("gpt-4o-mini", 2, 14, 0.5),
        ("mystery", 1, 4, None),
    ]
    assert (
        by_model["total"]["requests"],
        by_model["total"]["cost_usd"],
        by_model["total"]["unpriced_requests"],
    ) == (3, 0.5, 1)
    by_token = await report(group_by="token", project_id=project["id"], since="2026-01-02")
    assert [(g["key"], g["project_id"], g["requests"]) for g in by_token["groups"]] == [
        (token["id"], project["id"], 1)
    ]
    assert (await report(until="2025-12-31"))["groups"] == []


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"group_by": "week"}, "group_by"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"project_id": "not-a-uuid"}, "project_id"),
        ({"token_id": "x"}, "token_id"),
        ({"colour": "red"}, "colour"),
        ({"since": "2026-02-01", "until": "2026-01-01"}, None),
    ],
)
async def test_bad_usage_filters_are_422(manage: Manage, query: dict[str, str], param: str | None) -> None:
    response = await manage.client.get("/manage/usage", params=query, headers=AUTH)
    assert response.status == 422, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == "invalid_field" and error.get("param") == param


async def test_the_usage_report_needs_the_management_token(manage: Manage) -> None:
    assert (await manage.client.get("/manage/usage")).status == 401
    assert (await manage.client.post("/manage/usage", headers=AUTH)).status == 405
