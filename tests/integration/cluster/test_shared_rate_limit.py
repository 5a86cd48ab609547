"""One token, one rate limit, whatever instance answers (issue 16 §1): the limit lives in Redis."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from pathlib import Path

from redis.asyncio import Redis

from tests.integration.cluster.conftest import Cluster, MakeInstance
from tests.integration.events.conftest import RedisServer

# Run inside the Lua script, counted by Redis but no round trip of their own.
SCRIPT_COMMANDS = {"time", "zremrangebyscore", "zcard", "zadd", "pexpire", "zrange"}


def commands_by_name(info: dict) -> dict[str, int]:
    """INFO commandstats as {command: calls}: those a client sent, but the test's INFO and CONFIG RESETSTAT."""
    calls = {name.removeprefix("cmdstat_"): v["calls"] for name, v in info.items()}
    return {
        name: n for name, n in calls.items() if name not in {"info", "config|resetstat", *SCRIPT_COMMANDS}
    }


async def test_a_5_per_minute_token_gets_5_requests_across_two_instances(
    cluster: Cluster, start_instance: MakeInstance
) -> None:
    first, second = await start_instance(), await start_instance()
    _, _, token = await cluster.add_token(rate_limit_per_minute=5)
    statuses = [(await (first, second)[i % 2].proxy(token)).status for i in range(10)]
    assert statuses.count(200) == 5 and statuses.count(429) == 5, statuses
    assert statuses[:5] == [200] * 5


async def test_a_refusal_says_rate_limited_with_the_exact_retry_after(
    cluster: Cluster, start_instance: MakeInstance
) -> None:
    """Retry-After is when the first request of the window leaves it: 60 s after it, rounded up."""
    first, second = await start_instance(), await start_instance()
    _, _, token = await cluster.add_token(rate_limit_per_minute=2)
    before_first = time.time()
    assert (await first.proxy(token)).status == 200
    after_first = time.time()
    assert (await second.proxy(token)).status == 200
    before_refusal = time.time()
    refused = await first.proxy(token)
    after_refusal = time.time()
    assert refused.status == 429
    error = (await refused.json())["error"]
    assert (error["code"], error["type"]) == ("rate_limited", "rate_limit_error")
    retry_after = int(refused.headers["Retry-After"])
    earliest = math.ceil(before_first + 60 - after_refusal)
    latest = math.ceil(after_first + 60 - before_refusal)
    assert earliest <= retry_after <= latest and retry_after <= 60, (earliest, retry_after, latest)


async def test_one_redis_round_trip_per_limited_request_and_none_for_an_unlimited_token(
    cluster: Cluster, start_instance: MakeInstance, tmp_path: Path
) -> None:
    """On a private Redis, so every command counted is ours."""
    private = RedisServer(tmp_path)
    private.start()
    redis = Redis(host="127.0.0.1", port=private.port)
    try:
        instance = await start_instance(REDIS_ADDR=private.addr)
        _, _, limited = await cluster.add_token(rate_limit_per_minute=1000)
        _, _, unlimited = await cluster.add_token()
        assert (await instance.proxy(limited)).status == 200  # the token is cached: what follows is steady
        assert (await instance.proxy(unlimited)).status == 200
        await redis.config_resetstat()
        for _ in range(20):
            assert (await instance.proxy(unlimited)).status == 200
        assert commands_by_name(await redis.info("commandstats")) == {}
        for _ in range(20):
            assert (await instance.proxy(limited)).status == 200
        assert commands_by_name(await redis.info("commandstats")) == {"evalsha": 20}
    finally:
        await redis.aclose()
        private.stop()


async def test_concurrent_requests_share_round_trips_and_the_limit_stays_exact(
    cluster: Cluster, start_instance: MakeInstance, tmp_path: Path
) -> None:
    """100 requests at once on two instances for a 30/min token: exactly 30 pass, each counted by its
    own EVALSHA, the ones waiting together sent in one pipelined round trip."""
    private = RedisServer(tmp_path)
    private.start()
    redis = Redis(host="127.0.0.1", port=private.port)
    try:
        first, second = (
            await start_instance(REDIS_ADDR=private.addr),
            await start_instance(REDIS_ADDR=private.addr),
        )
        _, _, token = await cluster.add_token(rate_limit_per_minute=30)
        _, _, warm = await cluster.add_token(rate_limit_per_minute=1000)
        for instance in (first, second):  # the tokens cached on both, the script loaded
            assert (await instance.proxy(warm)).status == 200
        await redis.config_resetstat()
        statuses = await asyncio.gather(*((first, second)[i % 2].proxy(token) for i in range(100)))
        counted = Counter(r.status for r in statuses)
        assert counted == {200: 30, 429: 70}, counted
        assert commands_by_name(await redis.info("commandstats")) == {"evalsha": 100}
        # Redis reads a pipelined batch off its socket at once: far fewer reads than requests
        reads = (await redis.info("stats"))["total_reads_processed"] - 2  # the two INFO calls
        assert reads < 50, reads
    finally:
        await redis.aclose()
        private.stop()


async def test_a_flushed_script_cache_is_loaded_again_and_the_limit_stays_shared(
    cluster: Cluster, start_instance: MakeInstance
) -> None:
    """SCRIPT FLUSH (or a Redis restart that kept the data): the next hits get NOSCRIPT, the limiter loads
    the script and sends them again; nothing falls back to a per-instance count."""
    first, second = await start_instance(), await start_instance()
    _, _, token = await cluster.add_token(rate_limit_per_minute=4)
    assert (await first.proxy(token)).status == 200
    redis = Redis(host="127.0.0.1", port=6379)
    try:
        await redis.script_flush()
    finally:
        await redis.aclose()
    statuses = [(await (second, first)[i % 2].proxy(token)).status for i in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    ready = await first.client.get("/ready")
    assert "degraded" not in await ready.text()
