"""Usage accounting through whole servers, exact against what the fake upstream reported: 1,000 mixed
requests (JSON and SSE, cached prompt tokens, answers without usage that the proxy estimates), on SQLite
and PostgreSQL; costs from the price table (bundled and PRICES_PATH) to the cent; unknown models unpriced."""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage as PricedUsage
from genai_prices import calc_price

from llmproxy.openai.estimate import estimate_usage
from llmproxy.openai.tokencount import TokenCounter
from llmproxy.store.base import UsageQuery
from tests.integration.spend.conftest import PATH, Server, chat_body, poll, reply_bytes

MODELS = ("gpt-4o-mini", "test-model", "mystery-model")  # bundled price, PRICES_PATH price, no price
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


def workload(n: int, seed: int) -> list[bytes]:
    """``n`` chat requests: a third streamed, one in five without usage (estimated), some with cached tokens."""
    rng = random.Random(seed)
    bodies = []
    for i in range(n):
        model = MODELS[i % 3]
        content = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
        prompt = rng.randint(5, 5000)
        usage = None if i % 5 == 4 else [prompt, rng.randint(1, 900), rng.choice([0, 0, prompt // 2])]
        bodies.append(chat_body(model, usage, content, stream=i % 3 == 1))
    return bodies


def cost(model: str, prompt: int, completion: int, cached: int) -> Decimal | None:
    if model == "gpt-4o-mini":
        usage = PricedUsage(input_tokens=prompt, output_tokens=completion, cache_read_tokens=cached)
        return calc_price(usage, model_ref=model, provider_id="openai").total_price
    if model == "test-model":  # PRICES_PATH: 2.0 / 8.0 / 0.5 USD per 1M
        return (
            Decimal(prompt - cached) * 2 + Decimal(cached) * Decimal("0.5") + Decimal(completion) * 8
        ) / 1_000_000
    return None


def expected(bodies: list[bytes]) -> dict[str, dict[str, Any]]:
    """Per model: what the proxy must account, from the usage the upstream reports or, where it reports
    none, the proxy's own count of the very bodies it relayed."""
    counter = TokenCounter()
    sums: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    for body in bodies:
        asked = json.loads(body)
        model, usage = asked["model"], asked["x_reply"]["usage"]
        s = sums[model]
        s["requests"] += 1
        if usage is None:
            answer, stream = reply_bytes(body)
            counted = estimate_usage(PATH, body, answer, stream, model, counter)
            assert counted is not None
            usage = [counted.prompt_tokens, counted.completion_tokens, 0]
            s["estimated_requests"] += 1
        prompt, completion, cached = usage
        s["prompt_tokens"] += prompt
        s["completion_tokens"] += completion
        s["cached_tokens"] += cached
        price = cost(model, prompt, completion, cached)
        if price is None:
            s["unpriced_requests"] += 1
        else:
            s["cost_usd"] += price
    return sums


async def send_all(server: Server, token: str, bodies: list[bytes], concurrency: int = 8) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(body: bytes) -> None:
        async with gate:
            resp = await server.chat(token, body)
            assert resp.status == 200, await resp.text()

    await asyncio.gather(*(one(b) for b in bodies))


async def accounted(server: Server, n: int) -> dict[str, Any]:
    """The usage report by model once all ``n`` requests are in the database (flushing to get there)."""
    groups: dict[str, Any] = {}

    async def all_in() -> bool:
        await server.flush()
        report = await server.store.usage_report(UsageQuery(group_by="model"))
        groups.clear()
        groups.update({g.key: g for g in report})
        return sum(g.requests for g in report) >= n

    await poll(all_in, f"{n} requests accounted")
    return groups


def assert_exact(groups: dict[str, Any], sums: dict[str, dict[str, Any]]) -> None:
    assert set(groups) == set(sums)
    for model, s in sums.items():
        g = groups[model]
        for name in (
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "estimated_requests",
            "unpriced_requests",
        ):
            assert getattr(g, name) == s[name], (model, name)
        expected_cost = s["cost_usd"] or Decimal(0)
        assert abs(Decimal(str(g.cost_usd)) - expected_cost) < Decimal("0.000001"), model
        assert round(Decimal(str(g.cost_usd)), 2) == round(expected_cost, 2), model  # to the cent


async def test_a_thousand_mixed_requests_are_accounted_exactly_with_events_on(
    database, start_server, tmp_path
) -> None:
    server = await start_server(database, FILE_EVENT_LOG=str(tmp_path / "events.jsonl"))
    project, token = await server.add_token()
    bodies = workload(1000, seed=17)
    await send_all(server, token["token"], bodies)
    sums = expected(bodies)
    assert_exact(await accounted(server, 1000), sums)
    stored = await server.store.get_token(token["id"])
    assert stored is not None
    assert stored.prompt_tokens == sum(s["prompt_tokens"] for s in sums.values())
    assert stored.completion_tokens == sum(s["completion_tokens"] for s in sums.values())
    assert stored.cached_tokens == sum(s["cached_tokens"] for s in sums.values())
    total_cost = sum((s["cost_usd"] or Decimal(0) for s in sums.values()), Decimal(0))
    assert round(Decimal(str(stored.cost_usd)), 2) == round(total_cost, 2)
    shown = await server.manage("GET", f"/manage/projects/{project['id']}")
    assert (
        shown["prompt_tokens"] == stored.prompt_tokens
        and shown["completion_tokens"] == stored.completion_tokens
    )


async def test_a_metered_tokens_requests_are_accounted_exactly_with_events_off(
    database, start_server
) -> None:
    server = await start_server(database)
    _, token = await server.add_token(max_tokens=10**15)  # a budget: its usage must be read
    bodies = workload(300, seed=18)
    await send_all(server, token["token"], bodies)
    assert_exact(await accounted(server, 300), expected(bodies))


async def test_a_plain_tokens_usage_is_not_read_with_events_off(database, start_server) -> None:
    """Events off and no budget: the request path reads nothing; only the request count is kept."""
    server = await start_server(database)
    _, token = await server.add_token()
    await send_all(server, token["token"], workload(10, seed=19))

    async def counted() -> bool:
        await server.flush()
        stored = await server.store.get_token(token["id"])
        return stored is not None and stored.request_count == 10

    await poll(counted, "10 requests counted")
    assert await server.store.usage_report(UsageQuery()) == []


async def test_unknown_models_are_counted_unpriced_in_the_metrics(database, start_server, tmp_path) -> None:
    server = await start_server(database, FILE_EVENT_LOG=str(tmp_path / "events.jsonl"))
    _, token = await server.add_token()
    await send_all(server, token["token"], [chat_body("mystery-model", [5, 5, 0], "hi")] * 3)
    await accounted(server, 3)
    text = await (await server.client.get("/metrics/prometheus")).text()
    assert 'llm_proxy_unpriced_requests_total{model="mystery-model"} 3.0' in text
    report = await server.manage("GET", "/manage/usage?group_by=model")
    assert [(g["key"], g["cost_usd"], g["unpriced_requests"]) for g in report["groups"]] == [
        ("mystery-model", None, 3)
    ]


@pytest.mark.parametrize("events", [True, False])
async def test_usage_lands_in_the_days_rollup_of_its_token_and_project(
    database, start_server, tmp_path, events
) -> None:
    env = {"FILE_EVENT_LOG": str(tmp_path / "events.jsonl")} if events else {}
    server = await start_server(database, **env)
    project, token = await server.add_token(max_cost_usd=1000.0)
    await send_all(server, token["token"], [chat_body("test-model", [1000, 500, 0], "hi")] * 2)
    await accounted(server, 2)
    by_token = await server.manage("GET", f"/manage/usage?group_by=token&project_id={project['id']}")
    [line] = by_token["groups"]
    assert (line["key"], line["project_id"], line["requests"], line["total_tokens"]) == (
        token["id"],
        project["id"],
        2,
        3000,
    )
    assert line["cost_usd"] == pytest.approx(2 * (1000 * 2.0 + 500 * 8.0) / 1e6)
