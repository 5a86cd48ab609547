"""Hits in the token's books, auth before the cache, and purging through the management API."""

from __future__ import annotations

from redis.asyncio import Redis

from llmproxy.store.base import AuditQuery
from tests.integration.cache.conftest import MANAGE, MakeStack, poll


async def test_hits_count_in_cache_hit_count_and_not_in_request_count(make_stack: MakeStack) -> None:
    stack = await make_stack()
    for _ in range(3):
        resp = await stack.get()
        assert resp.status == 200
        await stack.read(resp)
    assert len(stack.upstream.requests) == 1

    async def counted() -> bool:
        token = await stack.store.get_token(stack.token_id)
        return token is not None and token.cache_hit_count == 2

    await poll(counted, "cache_hit_count to reach 2 in the database")
    token = await stack.store.get_token(stack.token_id)
    assert token is not None and token.request_count == 1 and token.last_used_at is not None


async def test_a_revoked_token_never_gets_a_cached_answer(make_stack: MakeStack) -> None:
    stack = await make_stack()
    await stack.read(await stack.get())
    revoked = await stack.client.delete(f"/manage/tokens/{stack.token_id}", headers=MANAGE)
    assert revoked.status == 204

    resp = await stack.get()
    assert resp.status == 401
    assert (await stack.json(resp))["error"]["code"] == "token_revoked"
    assert "X-PROXY-CACHE" not in resp.headers
    assert len(stack.upstream.requests) == 1


async def test_purge_by_project_prefix_is_audited_and_the_next_request_misses(
    make_stack: MakeStack, backend: str, redis: Redis
) -> None:
    stack = await make_stack()
    other_project, _, other_token = await stack.add_project("other")
    mine = await stack.get()
    await stack.read(mine)
    theirs = await stack.get(token=other_token)
    await stack.read(theirs)

    purged = await stack.client.delete(
        "/manage/cache", params={"prefix": f"{stack.project_id}:"}, headers=MANAGE
    )
    assert purged.status == 200
    assert await stack.json(purged) == {"deleted": 1}
    if backend == "redis":
        assert await redis.exists(mine.headers["X-PROXY-CACHE-KEY"]) == 0
        assert await redis.exists(theirs.headers["X-PROXY-CACHE-KEY"]) == 1

    after = await stack.get()
    await stack.read(after)
    still = await stack.get(token=other_token)
    await stack.read(still)
    assert after.headers["X-PROXY-CACHE"] == "miss" and still.headers["X-PROXY-CACHE"] == "hit"
    assert len(stack.upstream.requests) == 3

    async def audited() -> bool:
        records, _ = await stack.store.list_audit(AuditQuery(action="cache.purge"))
        return len(records) == 1

    await poll(audited, "the cache.purge audit record")
    records, _ = await stack.store.list_audit(AuditQuery(action="cache.purge"))
    assert records[0].result == "success"
    assert records[0].details == {"prefix": f"{stack.project_id}:", "deleted": 1}
    assert other_project not in str(records[0].details)


async def test_purge_by_endpoint_and_purge_of_everything(make_stack: MakeStack) -> None:
    stack = await make_stack()
    for path in ("/v1/models", "/v1/models/gpt-4o-mini", "/v1/files"):
        await stack.read(await stack.get(path))

    by_path = await stack.client.delete(
        "/manage/cache", params={"prefix": f"{stack.project_id}:GET:/v1/models"}, headers=MANAGE
    )
    assert await stack.json(by_path) == {"deleted": 2}
    everything = await stack.client.delete("/manage/cache", headers=MANAGE)
    assert await stack.json(everything) == {"deleted": 1}

    files = await stack.get("/v1/files")
    await stack.read(files)
    assert files.headers["X-PROXY-CACHE"] == "miss"
    assert len(stack.upstream.requests) == 4
