"""Tokens per minute through whole servers: charged with each response's real usage, checked before the
next request (429 rate_limited with Retry-After), per instance without Redis and shared through Redis."""

from __future__ import annotations

from aiohttp import ClientResponse

from tests.integration.spend.conftest import Server, chat_body, poll

ASK = chat_body("gpt-4o-mini", [9, 3, 0], "hi")  # 12 tokens a request
SHARED_REDIS = "127.0.0.1:6379"


async def charged(server: Server, token_id: str, tokens: int) -> None:
    """Until ``server`` accounted the token's usage (and, flushing, sent its TPM charges to Redis)."""

    async def written() -> bool:
        await server.flush()
        stored = await server.store.get_token(token_id)
        return stored is not None and stored.prompt_tokens + stored.completion_tokens == tokens

    await poll(written, f"{tokens} tokens accounted")


def assert_tpm_refusal(resp: ClientResponse, body: dict[str, object]) -> None:
    assert resp.status == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    error = body["error"]
    assert isinstance(error, dict) and error["code"] == "rate_limited"
    assert "20 tokens per minute" in str(error["message"])


async def test_a_token_over_its_tokens_per_minute_waits(database, start_server) -> None:
    server = await start_server(database)
    _, token = await server.add_token(tokens_per_minute=20)
    for n in (1, 2):  # 12, then 24: the second crosses 20 and completes
        assert (await server.chat(token["token"], ASK)).status == 200
        await charged(server, token["id"], 12 * n)
    refused = await server.chat(token["token"], ASK)
    assert_tpm_refusal(refused, await refused.json())


async def test_a_project_limit_counts_every_token_of_the_project(database, start_server) -> None:
    server = await start_server(database)
    project, one = await server.add_token()
    await server.manage("PATCH", f"/manage/projects/{project['id']}", {"tokens_per_minute": 20})
    _, two = await server.add_token(project)
    assert (await server.chat(one["token"], ASK)).status == 200
    await charged(server, one["id"], 12)
    assert (await server.chat(two["token"], ASK)).status == 200
    await charged(server, two["id"], 12)
    refused = await server.chat(one["token"], ASK)
    assert_tpm_refusal(refused, await refused.json())


async def test_tokens_per_minute_are_shared_across_instances_through_redis(
    postgres, start_server, redis_prefix
) -> None:
    first = await start_server(postgres, redis_prefix=redis_prefix, REDIS_ADDR=SHARED_REDIS)
    second = await start_server(postgres, redis_prefix=redis_prefix, REDIS_ADDR=SHARED_REDIS)
    _, token = await first.add_token(tokens_per_minute=20)
    assert (await first.chat(token["token"], ASK)).status == 200
    await charged(first, token["id"], 12)  # its flush sends the charge to Redis
    assert (await second.chat(token["token"], ASK)).status == 200  # 12 < 20 seen from Redis
    await charged(second, token["id"], 24)
    refused = await first.chat(token["token"], ASK)  # 24 in the shared window: the first instance knows
    assert_tpm_refusal(refused, await refused.json())
    refused = await second.chat(token["token"], ASK)
    assert_tpm_refusal(refused, await refused.json())
