"""RedisStorage against the real Redis: SET PX, msgpack entries, SCAN+UNLINK purge, failing soft."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from llmproxy.cache.storage import Entry, RedisStorage, connect_cache_redis
from llmproxy.config import RedisSettings
from tests.integration.cache.conftest import closed_port, poll


def entry(body: bytes = b"{}", ttl: float = 60.0) -> Entry:
    now = time.time()
    return Entry(
        status=200,
        headers=[("Content-Type", "application/json")],
        body=body,
        stored_at=now,
        expires_at=now + ttl,
        age=0,
        vary=[("x-tenant", None)],
        etag='"e"',
        encoding="identity",
    )


@pytest.fixture
async def prefix(redis: Redis) -> AsyncIterator[str]:
    name = f"test:{uuid4().hex}:cache:"
    yield name
    keys = [key async for key in redis.scan_iter(match=name + "*", count=1000)]
    if keys:
        await redis.delete(*keys)


@pytest.fixture
async def storage() -> AsyncIterator[RedisStorage]:
    store = RedisStorage(connect_cache_redis(RedisSettings(addr="127.0.0.1:6379")))
    yield store
    await store.aclose()


async def test_a_put_entry_is_stored_with_its_ttl_and_read_back(
    storage: RedisStorage, redis: Redis, prefix: str
) -> None:
    key = prefix + "p1:GET:/v1/models:abc"
    storage.put(key, entry(b"hello", ttl=30))
    await poll(lambda: _exists(redis, key), "the SET to land")
    assert 0 < await redis.pttl(key) <= 30_000
    found = await storage.get(key)
    assert found is not None
    assert (found.body, found.vary, found.etag) == (b"hello", [("x-tenant", None)], '"e"')


async def test_a_value_that_is_not_an_entry_reads_as_a_miss(
    storage: RedisStorage, redis: Redis, prefix: str
) -> None:
    await redis.set(prefix + "junk", b"\x93not an entry", px=10_000)
    assert await storage.get(prefix + "junk") is None


async def test_purge_unlinks_every_key_under_the_prefix_in_batches(
    storage: RedisStorage, redis: Redis, prefix: str
) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(1200):
            pipe.set(f"{prefix}p1:GET:/v1/files/{n}:h", b"x", px=60_000)
        pipe.set(f"{prefix}p2:GET:/v1/files:h", b"x", px=60_000)
        await pipe.execute()
    assert await storage.purge(prefix + "p1:") == 1200
    assert await redis.exists(f"{prefix}p2:GET:/v1/files:h") == 1


async def test_glob_characters_in_a_purge_prefix_are_taken_literally(
    storage: RedisStorage, redis: Redis, prefix: str
) -> None:
    await redis.set(prefix + "p1:GET:/v1/a:h", b"x", px=60_000)
    assert await storage.purge(prefix + "p*") == 0
    assert await storage.purge(prefix + "p?:") == 0
    assert await redis.exists(prefix + "p1:GET:/v1/a:h") == 1


async def test_an_unreachable_redis_is_a_fast_miss_and_then_left_alone() -> None:
    down = RedisStorage(connect_cache_redis(RedisSettings(addr=f"127.0.0.1:{closed_port()}")), retry_after=60)
    try:
        assert down.available()
        assert await down.get("k") is None
        assert not down.available()  # resting: no more connection attempts for retry_after
        down.put("k", entry())
        assert await asyncio.wait_for(down.get("k"), timeout=0.01) is None
    finally:
        await down.aclose()


async def _exists(redis: Redis, key: str) -> bool:
    return bool(await redis.exists(key))
