"""Budgets and allowed models through whole servers: the request that crosses a budget completes, the next
is refused (429 budget_exceeded, x-should-retry: false, audited), also across two instances sharing
PostgreSQL; a token's allowed_models refuses every other model (403 model_not_allowed naming the list)."""

from __future__ import annotations

from typing import Any

from aiohttp import ClientResponse

from llmproxy.store.base import AuditQuery
from tests.integration.spend.conftest import Server, chat_body, poll

ASK = chat_body("gpt-4o-mini", [9, 3, 0], "hi")  # 12 tokens a request


async def settled(server: Server, token_id: str, tokens: int) -> None:
    """Until ``server`` has written the token's usage: the database holds ``tokens`` in all."""

    async def written() -> bool:
        await server.flush()
        stored = await server.store.get_token(token_id)
        return stored is not None and stored.prompt_tokens + stored.completion_tokens == tokens

    await poll(written, f"{tokens} tokens written")


async def assert_budget_refusal(resp: ClientResponse) -> None:
    assert resp.status == 429, await resp.text()
    assert resp.headers["x-should-retry"] == "false"
    error = (await resp.json())["error"]
    assert (error["code"], error["type"]) == ("budget_exceeded", "insufficient_quota")


async def audited_refusals(server: Server, reason: str) -> list[Any]:
    """The proxy_request audit rows with ``reason`` (the auditor writes in the background: polled)."""
    found: list[Any] = []

    async def written() -> bool:
        records, _ = await server.store.list_audit(AuditQuery(action="proxy_request", page_size=100))
        found[:] = [r for r in records if r.reason == reason]
        return bool(found)

    await poll(written, f"an audit record {reason}")
    return found


async def test_the_request_crossing_a_token_budget_completes_and_the_next_is_refused(
    database, start_server
) -> None:
    server = await start_server(database)
    project, token = await server.add_token(max_tokens=30)
    for n in (1, 2, 3):  # 12, 24, then 36: the third crosses 30 and still completes
        assert (await server.chat(token["token"], ASK)).status == 200
        await settled(server, token["id"], 12 * n)
    await assert_budget_refusal(await server.chat(token["token"], ASK))
    shown = await server.manage("GET", f"/manage/tokens/{token['id']}")
    assert (shown["status"], shown["prompt_tokens"] + shown["completion_tokens"]) == ("exhausted", 36)
    [record] = await audited_refusals(server, "budget_exceeded")
    assert (record.result, record.token_id, record.project_id) == ("denied", token["id"], project["id"])


async def test_a_budget_of_n_tokens_holds_across_two_instances_on_postgresql(postgres, start_server) -> None:
    first, second = await start_server(postgres), await start_server(postgres)
    _, token = await first.add_token(max_tokens=30)
    raw = token["token"]
    # each request on one instance, then that instance's flush (it writes), then the other's (it reads)
    for n, (serving, other) in enumerate([(first, second), (second, first), (first, second)], 1):
        assert (await serving.chat(raw, ASK)).status == 200
        await settled(serving, token["id"], 12 * n)
        await other.flush()
    await assert_budget_refusal(await second.chat(raw, ASK))  # crossed on the first instance
    await assert_budget_refusal(await first.chat(raw, ASK))
    stored = await first.store.get_token(token["id"])
    assert (
        stored is not None and stored.prompt_tokens + stored.completion_tokens == 36
    )  # nothing more got through


async def test_a_project_cost_budget_refuses_every_token_of_the_project(database, start_server) -> None:
    server = await start_server(database)
    project, one = await server.add_token()
    await server.manage("PATCH", f"/manage/projects/{project['id']}", {"max_cost_usd": 0.02})
    _, two = await server.add_token(project)
    ask = chat_body("test-model", [1000, 1000, 0], "hi")  # (1000 × 2 + 1000 × 8) / 1M = $0.01
    assert (await server.chat(one["token"], ask)).status == 200
    assert (await server.chat(two["token"], ask)).status == 200  # $0.02: crosses, completes

    async def spent() -> bool:
        await server.flush()
        stored = await server.store.get_project(project["id"])
        return stored is not None and stored.cost_usd >= 0.02 - 1e-9

    await poll(spent, "the project's cost written")
    await assert_budget_refusal(await server.chat(one["token"], ask))
    await assert_budget_refusal(await server.chat(two["token"], ask))


async def test_raising_a_spent_budget_lets_requests_through_again(database, start_server) -> None:
    server = await start_server(database)
    _, token = await server.add_token(max_tokens=10)
    assert (await server.chat(token["token"], ASK)).status == 200
    await settled(server, token["id"], 12)
    await assert_budget_refusal(await server.chat(token["token"], ASK))
    await server.manage("PATCH", f"/manage/tokens/{token['id']}", {"max_tokens": 100})
    assert (await server.chat(token["token"], ASK)).status == 200
    await server.manage("PATCH", f"/manage/tokens/{token['id']}", {"max_tokens": None})
    assert (await server.chat(token["token"], ASK)).status == 200


async def test_allowed_models_refuse_every_other_model(database, start_server, upstream) -> None:
    server = await start_server(database)
    project, token = await server.add_token(allowed_models=["gpt-4o*", "test-model"])
    raw = token["token"]
    assert (await server.chat(raw, chat_body("gpt-4o-mini", [1, 1, 0], "ok"))).status == 200
    assert (await server.chat(raw, chat_body("test-model", [1, 1, 0], "ok"))).status == 200
    before = len(upstream.requests)
    for model in ("o3", "GPT-4O-MINI", "test-model-2"):
        resp = await server.chat(raw, chat_body(model, [1, 1, 0], "no"))
        assert resp.status == 403, await resp.text()
        assert resp.headers["x-should-retry"] == "false"
        error = (await resp.json())["error"]
        assert (error["code"], error["param"]) == ("model_not_allowed", "model")
        assert model in error["message"] and "gpt-4o*, test-model" in error["message"]
    no_model = await server.chat(raw, b'{"messages": []}')
    assert no_model.status == 403
    assert len(upstream.requests) == before  # nothing refused was forwarded
    listing = await server.client.get("/v1/models", headers={"Authorization": f"Bearer {raw}"})
    assert listing.status == 200  # no model named, none needed
    records = await audited_refusals(server, "model_not_allowed")
    assert {r.token_id for r in records} == {token["id"]}
