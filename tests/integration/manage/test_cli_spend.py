"""``llm-proxy manage`` for spend control against a real server: budgets, TPM, allowed models, name and
metadata on ``token generate|update`` and ``project create|update``; ``usage`` as a table, JSON and CSV."""

from __future__ import annotations

import csv
import io
from datetime import date
from typing import Any

import pytest

from llmproxy.cli import build_parser
from llmproxy.store.base import UsageRow
from tests.integration.manage.support import UPSTREAM_KEY, Cli


async def new_project(cli: Cli, *extra: str) -> dict[str, Any]:
    result = await cli("--json", "project", "create", "--name", "acme", "--api-key", UPSTREAM_KEY, *extra)
    assert result.code == 0, result.err
    project = result.json()
    assert isinstance(project, dict)
    return project


async def test_token_generate_and_update_set_and_clear_every_spend_option(cli: Cli) -> None:
    project = await new_project(cli)
    generated = await cli(
        "--json", "token", "generate", "--project", "acme",
        "--max-tokens", "1000", "--max-cost-usd", "$2.50", "--tokens-per-minute", "100",
        "--allowed-models", "gpt-4o*, o3", "--name", "ci bot", "--metadata", '{"team": "search"}',
    )  # fmt: skip
    assert generated.code == 0, generated.err
    token = generated.json()
    assert isinstance(token, dict) and token["project_id"] == project["id"]
    assert (token["max_tokens"], token["max_cost_usd"], token["tokens_per_minute"]) == (1000, 2.5, 100)
    assert (token["allowed_models"], token["name"], token["metadata"]) == (
        ["gpt-4o*", "o3"],
        "ci bot",
        {"team": "search"},
    )
    shown = await cli("token", "get", token["id"][:8])
    assert 'allowed_models         ["gpt-4o*","o3"]' in shown.out
    cleared = await cli(
        "--json", "token", "update", token["id"][:8],
        "--max-tokens", "none", "--allowed-models", "none", "--name", "none", "--max-cost-usd", "3",
    )  # fmt: skip
    assert cleared.code == 0, cleared.err
    after = cleared.json()
    assert isinstance(after, dict)
    assert (after["max_tokens"], after["allowed_models"], after["name"], after["max_cost_usd"]) == (
        None,
        None,
        None,
        3.0,
    )
    assert (after["tokens_per_minute"], after["metadata"]) == (
        100,
        {"team": "search"},
    )  # not given: unchanged


async def test_project_create_and_update_take_budgets(cli: Cli) -> None:
    project = await new_project(cli, "--max-cost-usd", "10", "--max-tokens", "5000")
    assert (project["max_cost_usd"], project["max_tokens"], project["tokens_per_minute"]) == (
        10.0,
        5000,
        None,
    )
    updated = await cli(
        "--json", "project", "update", "acme", "--tokens-per-minute", "60", "--max-tokens", "none"
    )
    assert updated.code == 0, updated.err
    after = updated.json()
    assert isinstance(after, dict)
    assert (after["max_cost_usd"], after["max_tokens"], after["tokens_per_minute"]) == (10.0, None, 60)


@pytest.mark.parametrize(
    "argv",
    [
        ("token", "update", "x", "--max-tokens", "0"),
        ("token", "update", "x", "--max-cost-usd", "lots"),
        # msgspec writes an infinite float as null: the budget would be removed, not set
        ("token", "update", "x", "--max-cost-usd", "inf"),
        ("token", "update", "x", "--max-cost-usd", "1e999"),
        ("project", "update", "x", "--max-cost-usd", "nan"),
        # int() reads digits of any script: "١٠" would be a budget of 10 nobody typed as such
        ("token", "update", "x", "--max-tokens", "\u0661\u0660"),
        ("token", "update", "x", "--tokens-per-minute", "\u0665"),
        ("token", "update", "x", "--metadata", "[1, 2]"),
        ("token", "update", "x", "--allowed-models", " , "),
        ("usage", "--group-by", "week"),
    ],
)
def test_bad_spend_options_are_argument_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["manage", *argv])
    assert exit_.value.code == 2


async def with_usage(cli: Cli) -> tuple[dict[str, Any], dict[str, Any]]:
    project = await new_project(cli)
    token = (await cli("--json", "token", "generate", "--project", "acme")).json()
    assert isinstance(token, dict)
    day = date(2026, 11, 30)
    await cli.store.add_usage(
        [],
        [
            UsageRow(day=day, project_id=project["id"], token_id=token["id"], model="gpt-4o-mini", requests=3, prompt_tokens=300, completion_tokens=30, cached_tokens=100, cost_usd=0.0123),
            UsageRow(day=day, project_id=project["id"], token_id=token["id"], model="local-llama", requests=1, prompt_tokens=10, completion_tokens=5, unpriced_requests=1),
        ],
    )  # fmt: skip
    return project, token


async def test_usage_prints_a_table_with_a_total(cli: Cli) -> None:
    await with_usage(cli)
    result = await cli("usage", "--group-by", "model", "--project", "acme")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["KEY", "REQUESTS", "PROMPT", "COMPLETION", "CACHED", "COST_USD"]
    assert lines[1].split() == ["gpt-4o-mini", "3", "300", "30", "100", "0.0123"]
    assert lines[2].split() == ["local-llama", "1", "10", "5", "0", "unpriced"]
    assert lines[3].split() == ["TOTAL", "4", "310", "35", "100", "0.0123+"]
    assert "unpriced" in lines[4]


async def test_usage_as_json_is_the_apis_answer_and_as_csv_one_row_per_group(cli: Cli) -> None:
    project, token = await with_usage(cli)
    as_json = await cli(
        "--json", "usage", "--group-by", "token", "--since", "2026-11-30", "--until", "2026-11-30"
    )
    report = as_json.json()
    assert isinstance(report, dict)
    assert [(g["key"], g["project_id"], g["requests"]) for g in report["groups"]] == [
        (token["id"], project["id"], 4)
    ]
    as_csv = await cli("usage", "--group-by", "model", "--csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.out)))
    assert [(r["key"], r["requests"], r["cost_usd"], r["unpriced_requests"]) for r in rows] == [
        ("gpt-4o-mini", "3", "0.0123", "0"),
        ("local-llama", "1", "", "1"),
    ]
    nothing = await cli("usage", "--since", "2027-01-01")
    assert nothing.out == "(none)\n"
    bad = await cli("usage", "--since", "yesterday")
    assert bad.code == 1 and "422" in bad.err and "since" in bad.err
