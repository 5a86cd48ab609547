"""`DELETE /manage/cache` with the key a response showed in X-PROXY-CACHE-KEY, as an operator copies it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.integration.manage.support import AUTH
from tests.integration.test_metrics_endpoints import CHAT, CHAT_BODY, RunningProxy, running_proxy

CACHEABLE = {"Cache-Control": "public, max-age=300"}


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture(params=["in-memory", "redis"])
async def proxy(request, tmp_path, upstream) -> AsyncIterator[RunningProxy]:
    prefix = f"test:purge:{tmp_path.name}:"
    env = {
        "HTTP_CACHE_ENABLED": "true",
        "HTTP_CACHE_BACKEND": request.param,
        "REDIS_CACHE_KEY_PREFIX": prefix,
    }
    async with running_proxy(tmp_path, upstream, **env) as running:
        yield running


async def ask(proxy: RunningProxy, content: str) -> tuple[str, str]:
    """(X-PROXY-CACHE, X-PROXY-CACHE-KEY) of a cacheable chat request."""
    body = {**CHAT_BODY, "messages": [{"role": "user", "content": content}]}
    async with proxy.client.post(CHAT, json=body, headers={**proxy.auth(), **CACHEABLE}) as r:
        assert r.status == 200
        await r.read()
        return r.headers["X-PROXY-CACHE"], r.headers["X-PROXY-CACHE-KEY"]


async def purge(proxy: RunningProxy, **query: str) -> tuple[int, Any]:
    async with proxy.client.delete("/manage/cache", params=query, headers=AUTH) as r:
        return r.status, await r.json()


@pytest.mark.parametrize("param", ["key", "prefix"])
async def test_the_key_shown_in_x_proxy_cache_key_purges_exactly_that_entry(proxy, param):
    _, key = await ask(proxy, "one")
    await ask(proxy, "two")
    assert (await ask(proxy, "one"))[0] == "hit"

    assert await purge(proxy, **{param: key}) == (200, {"deleted": 1})

    assert (await ask(proxy, "one"))[0] == "miss"
    assert (await ask(proxy, "two"))[0] == "hit"  # the other entry is still there


async def test_a_project_prefix_with_or_without_the_key_prefix_purges_the_project(proxy):
    _, key = await ask(proxy, "one")
    await ask(proxy, "two")
    project = proxy.project["id"]
    key_prefix = proxy.settings.cache.key_prefix
    assert key.startswith(f"{key_prefix}{project}:POST:{CHAT}:")
    assert await purge(proxy, prefix=f"{key_prefix}{project}:") == (200, {"deleted": 2})
    await ask(proxy, "one")
    assert await purge(proxy, prefix=f"{project}:POST:{CHAT}") == (200, {"deleted": 1})


async def test_a_key_that_is_not_a_whole_cache_key_is_refused_with_422(proxy):
    _, key = await ask(proxy, "one")
    status, body = await purge(proxy, key=key[:-8])
    assert status == 422
    assert body["error"]["param"] == "key"
    status, body = await purge(proxy, key=key, prefix=key)
    assert (status, body["error"]["code"]) == (422, "invalid_field")
