"""The proxy's side of the response cache: a hit is answered without the upstream, a miss is kept."""

from __future__ import annotations

from aiohttp import web

from tests.fakes.upstream import json_reply

JSON = {"Content-Type": "application/json"}


class CacheDouble:
    """Hits on a scripted body; otherwise records what the proxy offers it to store."""

    max_object_bytes = 1000

    def __init__(self, hit: bytes | None = None) -> None:
        self.hit = hit
        self.looked_up: list[bytes] = []
        self.stored: list[tuple[bytes, int, bytes]] = []

    async def lookup(self, request, grant, body):
        self.looked_up.append(body)
        if self.hit is None:
            return None
        return web.Response(body=self.hit, headers={"X-PROXY-CACHE": "hit"})

    def storable(self, request, status, headers):
        return status == 200

    def response_headers(self, request):
        return (("X-PROXY-CACHE", "miss"), ("Cache-Status", "stored"))

    async def store(self, request, grant, body, status, headers, response_body):
        self.stored.append((body, status, response_body))


async def test_a_cache_hit_is_answered_without_the_upstream_and_counted_as_a_hit(make_proxy):
    cache = CacheDouble(hit=b'{"cached": true}')
    proxy = await make_proxy(cache=cache, observe=True)
    resp = await proxy.request("POST", "/v1/embeddings", data=b'{"input": "a"}', headers=proxy.auth(**JSON))
    assert resp.status == 200
    assert await resp.read() == b'{"cached": true}'
    assert resp.headers["X-PROXY-CACHE"] == "hit"
    assert cache.looked_up == [b'{"input": "a"}']
    assert (proxy.authority.cache_hits, proxy.authority.counted) == (1, 0)
    assert proxy.upstream.requests == []
    assert proxy.flows == []  # cache hits publish no event


async def test_a_miss_is_forwarded_and_its_complete_answer_offered_to_the_cache(make_proxy):
    cache = CacheDouble()
    proxy = await make_proxy(cache=cache)
    proxy.upstream.script(json_reply(b'{"data": [1, 2, 3]}'))
    body = b'{"input": "b"}'
    resp = await proxy.request("POST", "/v1/embeddings", data=body, headers=proxy.auth(**JSON))
    assert await resp.read() == b'{"data": [1, 2, 3]}'
    assert (resp.headers["X-PROXY-CACHE"], resp.headers["Cache-Status"]) == ("miss", "stored")
    assert cache.stored == [(body, 200, b'{"data": [1, 2, 3]}')]
    assert proxy.authority.counted == 1


async def test_an_answer_larger_than_the_cache_object_limit_is_not_offered(make_proxy):
    cache = CacheDouble()
    proxy = await make_proxy(cache=cache)
    proxy.upstream.script(json_reply(b"x" * 1001))
    resp = await proxy.request("POST", "/v1/embeddings", data=b"{}", headers=proxy.auth(**JSON))
    assert len(await resp.read()) == 1001
    assert cache.stored == []


async def test_an_error_answer_is_not_offered_to_the_cache(make_proxy):
    cache = CacheDouble()
    proxy = await make_proxy(cache=cache)
    proxy.upstream.script(json_reply(b'{"error": {}}', status=500))
    resp = await proxy.request("POST", "/v1/embeddings", data=b"{}", headers=proxy.auth(**JSON))
    assert resp.status == 500
    assert cache.stored == []
