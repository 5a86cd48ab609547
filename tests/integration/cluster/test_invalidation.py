"""A revocation, a deactivation or a new limit made through one instance reaches every instance at once,
not after the other's cache TTL (LLM_PROXY_API_KEY_CACHE_TTL, 30 s by default)."""

from __future__ import annotations

import time
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from tests.integration.cluster.conftest import Cluster, Instance, MakeInstance, poll
from tests.integration.events.conftest import RedisServer


async def refused_with(instance: Instance, token: str, status: int, code: str) -> bool:
    resp = await instance.proxy(token)
    if resp.status == 200:
        return False
    assert resp.status == status, await resp.text()
    assert (await resp.json())["error"]["code"] == code
    return True


async def until_published(watch: PubSub, message: str) -> None:
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        got = await watch.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if got is not None and got["data"] == message.encode():
            return
    raise AssertionError(f"{message} was not published")


async def test_a_token_revoked_through_one_instance_is_refused_by_the_other_at_once(
    cluster: Cluster, start_instance: MakeInstance
) -> None:
    first, second = await start_instance(), await start_instance()
    _, token_id, token = await cluster.add_token()  # unlimited: nothing but the cache decides
    assert (await second.proxy(token)).status == 200  # cached by the second instance
    await first.manage("DELETE", f"/manage/tokens/{token_id}")

    async def refused() -> bool:
        return await refused_with(second, token, 401, "token_revoked")

    await poll(refused, "the second instance to refuse the revoked token", deadline_s=1.0)


async def test_a_project_deactivated_through_one_instance_is_refused_by_the_other_at_once(
    cluster: Cluster, start_instance: MakeInstance
) -> None:
    first, second = await start_instance(), await start_instance()
    project_id, _, token = await cluster.add_token()
    assert (await second.proxy(token)).status == 200
    await first.manage("PATCH", f"/manage/projects/{project_id}", {"is_active": False})

    async def refused() -> bool:
        return await refused_with(second, token, 403, "project_inactive")

    await poll(refused, "the second instance to refuse the inactive project", deadline_s=1.0)


async def test_a_rate_limit_set_through_one_instance_applies_on_the_other_at_once(
    cluster: Cluster, start_instance: MakeInstance
) -> None:
    first, second = await start_instance(), await start_instance()
    _, token_id, token = await cluster.add_token()
    for _ in range(3):
        assert (await second.proxy(token)).status == 200
    await first.manage("PATCH", f"/manage/tokens/{token_id}", {"rate_limit_per_minute": 1})

    async def limited() -> bool:
        return await refused_with(second, token, 429, "rate_limited")

    await poll(limited, "the second instance to apply the new limit", deadline_s=1.0)


async def test_invalidations_missed_while_redis_was_down_are_made_good_when_it_is_back(
    cluster: Cluster, start_instance: MakeInstance, tmp_path: Path
) -> None:
    """A message sent during an outage is lost: the listener drops its whole cache when it subscribes again."""
    private = RedisServer(tmp_path)
    private.start()
    redis = Redis(host="127.0.0.1", port=private.port)
    try:
        first = await start_instance(REDIS_ADDR=private.addr)
        async with redis.pubsub() as watch:
            await watch.subscribe(f"{cluster.prefix}invalidate")
            _, token_id, token = await cluster.add_token()
            await until_published(watch, f"token:{token_id}")  # so it cannot reach the second instance late
        second = await start_instance(REDIS_ADDR=private.addr)

        async def listening() -> bool:  # its first subscription drops the cache too: let it happen first
            _, body = await second.ready()
            return body["checks"]["invalidations"] == "ok"

        await poll(listening, "the second instance to listen")
        assert (await second.proxy(token)).status == 200
        private.stop()

        async def deaf() -> bool:
            _, body = await second.ready()
            return body["checks"]["invalidations"] != "ok"

        await poll(deaf, "the second instance to notice the outage")
        await first.manage("DELETE", f"/manage/tokens/{token_id}")  # its message cannot be sent
        assert (await second.proxy(token)).status == 200  # still cached: nobody told it
        private.start()

        async def refused() -> bool:
            return await refused_with(second, token, 401, "token_revoked")

        await poll(refused, "the second instance to drop its cache once listening again")
    finally:
        await redis.aclose()
        private.stop()
