"""Redis unreachable: the rate limit falls back to each instance (fail open), says so once and in /ready,
and goes back to Redis when it answers again."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.integration.cluster.conftest import Cluster, Instance, MakeInstance, closed_port, poll
from tests.integration.events.conftest import RedisServer

DEGRADED = "degraded: local fallback"


def fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.getMessage().startswith("rate limit: Redis unreachable")
    ]


async def check_of(instance: Instance, name: str) -> str | None:
    status, body = await instance.ready()
    assert status == 200, body  # degraded, never unavailable: the instance serves
    return body["checks"].get(name)


async def test_with_redis_unreachable_requests_pass_under_the_local_limit_and_ready_says_degraded(
    cluster: Cluster, start_instance: MakeInstance, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    instance = await start_instance(REDIS_ADDR=f"127.0.0.1:{closed_port()}")
    _, _, token = await cluster.add_token(rate_limit_per_minute=3)
    statuses = [(await instance.proxy(token)).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]

    async def degraded() -> bool:
        return await check_of(instance, "ratelimit") == DEGRADED

    await poll(degraded, "/ready to report the local fallback")
    _, body = await instance.ready()
    assert body["status"] == "ready"
    assert body["checks"]["invalidations"] == "degraded: cache TTL only"
    await asyncio.sleep(1.2)  # time for the limiter to try Redis again (every second): still one warning
    assert (await instance.proxy(token)).status == 429
    assert len(fallback_warnings(caplog)) == 1, fallback_warnings(caplog)


async def test_a_redis_outage_falls_back_and_redis_is_used_again_when_it_answers(
    cluster: Cluster, start_instance: MakeInstance, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    private = RedisServer(tmp_path)
    private.start()
    redis = Redis(host="127.0.0.1", port=private.port)
    try:
        instance = await start_instance(REDIS_ADDR=private.addr)
        _, token_id, token = await cluster.add_token(rate_limit_per_minute=100)
        log_key = f"{cluster.prefix}ratelimit:{token_id}"
        assert (await instance.proxy(token)).status == 200
        assert await redis.zcard(log_key) == 1
        assert await check_of(instance, "ratelimit") == "ok"

        private.stop()
        assert [(await instance.proxy(token)).status for _ in range(5)] == [200] * 5  # fail open

        async def degraded() -> bool:
            return await check_of(instance, "ratelimit") == DEGRADED

        await poll(degraded, "/ready to report the local fallback")

        private.start()  # the same port, empty

        async def shared_again() -> bool:
            return await check_of(instance, "ratelimit") == "ok"

        await poll(shared_again, "the limiter to use Redis again")
        assert (await instance.proxy(token)).status == 200
        assert await redis.zcard(log_key) == 1  # counted in Redis again
        assert len(fallback_warnings(caplog)) == 1, fallback_warnings(caplog)
    finally:
        await redis.aclose()
        private.stop()
