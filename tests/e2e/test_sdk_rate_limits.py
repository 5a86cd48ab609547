"""429s as the official OpenAI Python SDK meets them, against the installed server on loopback.

A used-up quota can never succeed: the SDK must give up at once (``x-should-retry: false``) instead of
retrying twice in vain. A rate limit says exactly when a slot frees (never more than the 60 s window)
and, like OpenAI, what is left of the limit in ``x-ratelimit-*``.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes.upstream import FakeUpstream, json_reply

UPSTREAM_KEY = "sk-upstream-project-key-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "Say hello"}]


async def limited_token(server: Any, *limits: str) -> str:
    project = await server.manage("project", "create", "--name", "sdk", "--api-key", UPSTREAM_KEY)
    created = await server.manage("token", "generate", "--project-id", project["id"], *limits)
    return str(created["token"])


async def metrics(server: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as client:
        async with client.get(server.url + "/metrics") as r:
            return dict(await r.json())


async def test_a_used_up_quota_makes_the_sdk_give_up_after_one_request(make_server) -> None:
    async with FakeUpstream() as upstream:
        server = await make_server(UPSTREAM_BASE_URL=upstream.url)
        token = await limited_token(server, "--max-requests", "1")
        client = openai.AsyncOpenAI(api_key=token, base_url=server.url + "/v1")  # max_retries: 2
        try:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        finally:
            await client.close()
        figures = await metrics(server)
        assert figures["errors"]["by_path"]["/v1/chat/completions"] == {"4xx": 1}  # one request, not three
        assert figures["refusals"] == {"quota_exceeded": 1}
        assert caught.value.code == "quota_exceeded"
        assert caught.value.response.headers["x-should-retry"] == "false"
        assert len(upstream.requests) == 1


@pytest.mark.parametrize("backend", ["local", "redis"])
async def test_a_2_per_minute_token_is_told_exactly_when_a_slot_frees(make_server, backend) -> None:
    env = {"RATE_LIMIT_BACKEND": backend}
    if backend == "redis":
        env["REDIS_ADDR"] = "127.0.0.1:6379"
    async with FakeUpstream() as upstream:
        upstream.always(json_reply(headers={"x-ratelimit-limit-requests": "10000"}))
        server = await make_server(UPSTREAM_BASE_URL=upstream.url, **env)
        token = await limited_token(server, "--rate-limit-per-minute", "2")
        client = openai.AsyncOpenAI(api_key=token, base_url=server.url + "/v1", max_retries=0)
        try:
            first_sent = time.time()
            first = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MESSAGES
            )
            first_answered = time.time()
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            third_sent = time.time()
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            third_answered = time.time()
        finally:
            await client.close()

    # The upstream's own x-ratelimit-* pass through untouched; the token's go under our prefix.
    assert first.headers["x-ratelimit-limit-requests"] == "10000"
    assert first.headers["x-llmproxy-ratelimit-limit-requests"] == "2"
    assert first.headers["x-llmproxy-ratelimit-remaining-requests"] == "1"
    headers = caught.value.response.headers
    retry_after = int(headers["Retry-After"])
    # The first request leaves the window 60 s after it arrived: between these bounds, give or take 1 s.
    assert 60 - (third_answered - first_sent) - 1 <= retry_after <= 60 - (third_sent - first_answered) + 1
    assert retry_after <= 60
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
