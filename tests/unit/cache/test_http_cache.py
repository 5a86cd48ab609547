"""HttpCache over the memory storage with a fake clock: lookup, store and headers, without a server."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy

from llmproxy.auth.authority import Grant
from llmproxy.cache.http_cache import HttpCache
from llmproxy.cache.storage import MemoryStorage
from llmproxy.config import Settings
from tests.settings import with_changes

BODY = b'{"object":"list","data":[]}'
UPSTREAM = CIMultiDictProxy(
    CIMultiDict(
        {
            "Content-Type": "application/json",
            "Content-Length": str(len(BODY)),
            "ETag": '"e1"',
            "X-Request-ID": "req_up",
            "Date": "x",
        }
    )
)


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def grant(project_id: str = "p1") -> Grant:
    return Grant(
        token_id="t1",
        project_id=project_id,
        api_key="sk-up",
        upstream_base_url=None,
        max_requests=None,
        rate_limit_per_minute=None,
    )


def make_cache(**cache_settings: Any) -> tuple[HttpCache, Clock]:
    settings = with_changes(Settings(), cache={"enabled": True, **cache_settings})
    clock = Clock()
    storage = MemoryStorage(max_entries=100, max_bytes=1 << 20, clock=clock)
    return HttpCache(settings.cache, storage, clock=clock), clock


def request(method: str = "GET", path: str = "/v1/models", **headers: str) -> Any:
    return make_mocked_request(method, path, headers=headers)


async def fill(cache: HttpCache, method: str = "GET", body: bytes = b"", **headers: str) -> None:
    """A miss for ``method`` on /v1/models, answered by the upstream with BODY and stored."""
    req = request(method, **headers)
    assert await cache.lookup(req, grant(), body) is None
    assert cache.storable(req, 200, UPSTREAM)
    await cache.store(req, grant(), body, 200, UPSTREAM, BODY)


async def test_a_stored_answer_is_replayed_with_age_and_without_per_exchange_headers() -> None:
    cache, clock = make_cache()
    await fill(cache)
    clock.now += 7
    hit = await cache.lookup(request(), grant(), b"")
    assert hit is not None and hit.status == 200 and hit.body == BODY
    assert "Content-Length" not in hit.headers  # aiohttp sets it from the body it sends
    assert hit.headers["Age"] == "7" and hit.headers["Cache-Status"] == "hit"
    assert "X-Request-ID" not in hit.headers and "Date" not in hit.headers
    assert cache.stats.hits == 1 and cache.stats.misses == 1 and cache.stats.stores == 1


async def test_an_entry_is_not_served_after_its_ttl() -> None:
    cache, clock = make_cache(default_ttl=30.0)
    await fill(cache)
    clock.now += 30
    assert await cache.lookup(request(), grant(), b"") is None


async def test_a_client_max_age_refuses_older_entries() -> None:
    cache, clock = make_cache()
    await fill(cache)
    clock.now += 20
    assert await cache.lookup(request(**{"Cache-Control": "max-age=10"}), grant(), b"") is None
    assert await cache.lookup(request(**{"Cache-Control": "max-age=30"}), grant(), b"") is not None


async def test_head_is_answered_from_the_get_entry() -> None:
    cache, _ = make_cache()
    await fill(cache)
    hit = await cache.lookup(request("HEAD"), grant(), b"")
    assert hit is not None and hit.headers["X-PROXY-CACHE"] == "hit"


async def test_forwarded_answers_say_miss_bypass_or_stored_only_when_sure() -> None:
    cache, _ = make_cache()
    looked_up = request()
    await cache.lookup(looked_up, grant(), b"")
    assert dict(cache.response_headers(looked_up))["Cache-Status"] == "miss"
    cache.storable(looked_up, 200, UPSTREAM)
    headers = dict(cache.response_headers(looked_up))
    assert headers["Cache-Status"] == "stored" and headers["X-PROXY-CACHE"] == "miss"
    assert headers["X-PROXY-CACHE-KEY"].startswith("llmproxy:cache:p1:GET:/v1/models:")

    stream = request("POST", **{"Cache-Control": "public"})
    await cache.lookup(stream, grant(), b"{}")
    assert cache.storable(stream, 200, CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"})))
    assert dict(cache.response_headers(stream))["Cache-Status"] == "miss"  # size unknown: no promise

    post = request("POST")
    await cache.lookup(post, grant(), b"{}")
    assert not cache.storable(post, 200, UPSTREAM)
    assert dict(cache.response_headers(post)) == {"X-PROXY-CACHE": "miss", "Cache-Status": "bypass"}


async def test_a_body_over_the_object_limit_is_not_stored_even_if_announced_smaller() -> None:
    cache, _ = make_cache(max_object_bytes=10)
    req = request()
    await cache.lookup(req, grant(), b"")
    lying = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json", "Content-Length": "5"}))
    assert cache.storable(req, 200, lying)
    await cache.store(req, grant(), b"", 200, lying, BODY)
    assert await cache.lookup(request(), grant(), b"") is None
    announced = request()
    assert await cache.lookup(announced, grant(), b"") is None
    assert not cache.storable(announced, 200, UPSTREAM)  # announced larger: not even captured


async def test_purge_is_scoped_below_the_configured_key_prefix() -> None:
    cache, _ = make_cache(key_prefix="tenant-a:")
    await fill(cache)
    assert await cache.purge("p2:") == 0
    assert await cache.purge("p1:GET:/v1/models") == 1
    assert await cache.lookup(request(), grant(), b"") is None
