"""A Redis cache that is down costs hits, never answers: requests still succeed, purges say why they can't."""

from __future__ import annotations

import pytest

from tests.integration.cache.conftest import MANAGE, MakeStack, closed_port


@pytest.fixture
def backend() -> str:
    return "redis"


async def test_requests_are_answered_as_misses_when_redis_is_down(
    make_stack: MakeStack, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await make_stack(REDIS_ADDR=f"127.0.0.1:{closed_port()}")
    for _ in range(3):
        resp = await stack.get()
        assert resp.status == 200
        assert (await resp.json())["object"] == "chat.completion"
        assert resp.headers["X-PROXY-CACHE"] == "miss"
        assert resp.headers["Cache-Status"] in ("miss", "bypass")
    assert len(stack.upstream.requests) == 3
    # the cache's own warning (the shared rate limit and the invalidations say so once each too)
    warnings = [r for r in caplog.records if r.name == "llmproxy.cache.storage"]
    assert len(warnings) == 1  # rate-limited, not one per request


async def test_purge_while_redis_is_down_answers_503(make_stack: MakeStack) -> None:
    stack = await make_stack(REDIS_ADDR=f"127.0.0.1:{closed_port()}")
    resp = await stack.client.delete("/manage/cache", headers=MANAGE)
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "service_unavailable"
