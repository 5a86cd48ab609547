"""Through the whole server, on both backends: what is answered from the cache, and what goes upstream."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from tests.fakes.upstream import CHAT_COMPLETION, json_reply
from tests.integration.cache.conftest import MakeStack

MODELS = {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "owned_by": "openai"}]}


async def test_a_repeated_get_is_answered_from_the_cache_byte_for_byte(
    make_stack: MakeStack, backend: str, redis: Redis
) -> None:
    stack = await make_stack()
    stack.upstream.always(json_reply(MODELS, headers={"Cache-Control": "max-age=120"}))

    first = await stack.get("/v1/models?b=2&a=1")
    first_body = await stack.read(first)
    second = await stack.get("/v1/models?a=1&b=2")
    second_body = await stack.read(second)

    assert len(stack.upstream.requests) == 1
    assert (first.status, second.status) == (200, 200)
    assert second_body == first_body == json.dumps(MODELS).encode()
    assert first.headers["X-PROXY-CACHE"] == "miss" and first.headers["Cache-Status"] == "stored"
    assert second.headers["X-PROXY-CACHE"] == "hit" and second.headers["Cache-Status"] == "hit"
    key = second.headers["X-PROXY-CACHE-KEY"]
    assert key == first.headers["X-PROXY-CACHE-KEY"]
    assert key.startswith(f"{stack.key_prefix}{stack.project_id}:GET:/v1/models:")
    assert int(second.headers["Age"]) >= 0
    assert second.headers["Content-Type"] == "application/json"
    assert second.headers["openai-processing-ms"] == "12"  # the upstream's own headers are replayed
    if backend == "redis":
        assert 0 < await redis.pttl(key) <= 120_000


async def test_a_hit_carries_a_fresh_request_id_never_a_stored_one(make_stack: MakeStack) -> None:
    stack = await make_stack()
    first = await stack.get()
    await stack.read(first)
    hit = await stack.get()
    await stack.read(hit)
    named = await stack.get(**{"X-Request-ID": "client-chosen-id-1"})
    await stack.read(named)

    assert hit.headers["X-PROXY-CACHE"] == named.headers["X-PROXY-CACHE"] == "hit"
    assert hit.headers["X-Request-ID"] not in (first.headers["X-Request-ID"], "req_fake_upstream_1")
    assert len(hit.headers["X-Request-ID"]) == 32
    assert named.headers.getall("X-Request-ID") == ["client-chosen-id-1"]
    assert "X-Upstream-Request-ID" not in hit.headers and "Server-Timing" not in hit.headers


async def test_post_without_opt_in_is_never_cached(make_stack: MakeStack) -> None:
    stack = await make_stack()
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
    for _ in range(2):
        resp = await stack.post(body)
        assert resp.status == 200
        assert json.loads(await stack.read(resp)) == CHAT_COMPLETION
        assert resp.headers["X-PROXY-CACHE"] == "miss" and resp.headers["Cache-Status"] == "bypass"
    assert len(stack.upstream.requests) == 2


async def test_opted_in_post_with_the_same_json_in_another_key_order_is_a_hit(make_stack: MakeStack) -> None:
    stack = await make_stack()
    first = await stack.post(
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
        **{"Cache-Control": "public, max-age=60"},
    )
    first_body = await stack.read(first)
    second = await stack.post(
        b'{"messages": [{"content": "hi", "role": "user"}], "model": "gpt-4o-mini"}',
        **{"Cache-Control": "max-age=60"},
    )
    second_body = await stack.read(second)
    third = await stack.post(
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"bye"}]}', **{"Cache-Control": "public"}
    )
    await stack.read(third)

    assert second.headers["Cache-Status"] == "hit" and second_body == first_body
    assert third.headers["Cache-Status"] == "stored"  # another prompt is another entry
    assert [r.body for r in stack.upstream.requests][0].startswith(b'{"model":"gpt-4o-mini"')  # sent as given
    assert len(stack.upstream.requests) == 2


async def test_opted_in_post_with_json_nested_too_deeply_to_canonicalise_is_keyed_on_its_bytes(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack()
    body = b'{"model":"gpt-4o-mini","x":' + b"[" * 1000 + b"]" * 1000 + b"}"
    first = await stack.post(body, **{"Cache-Control": "public, max-age=60"})
    first_body = await stack.read(first)
    second = await stack.post(body, **{"Cache-Control": "public, max-age=60"})
    second_body = await stack.read(second)

    assert (first.status, first.headers["Cache-Status"]) == (200, "stored")
    assert (second.headers["Cache-Status"], second_body) == ("hit", first_body)
    assert [r.body for r in stack.upstream.requests] == [body]


async def test_request_no_store_bypasses_and_no_cache_refreshes_the_entry(make_stack: MakeStack) -> None:
    stack = await make_stack()
    stack.upstream.script(json_reply({"v": 1}), json_reply({"v": 2}), json_reply({"v": 3}))

    no_store = await stack.get(**{"Cache-Control": "no-store"})
    assert await stack.json(no_store) == {"v": 1}
    assert no_store.headers["Cache-Status"] == "bypass"
    stored = await stack.get()
    assert await stack.json(stored) == {"v": 2} and stored.headers["Cache-Status"] == "stored"
    refreshed = await stack.get(**{"Cache-Control": "no-cache"})
    assert await stack.json(refreshed) == {"v": 3} and refreshed.headers["Cache-Status"] == "stored"
    hit = await stack.get()
    assert await stack.json(hit) == {"v": 3} and hit.headers["Cache-Status"] == "hit"
    assert len(stack.upstream.requests) == 3


async def test_responses_forbidding_storage_are_not_stored(make_stack: MakeStack) -> None:
    stack = await make_stack()
    stack.upstream.script(
        json_reply({"v": 1}, headers={"Cache-Control": "no-store"}),
        json_reply({"v": 2}, headers={"Cache-Control": "private"}),
        json_reply({"v": 3}, headers={"Set-Cookie": "s=1"}),
        json_reply({"v": 4}, headers={"Vary": "*"}),
        json_reply({"error": "x"}, status=404),
    )
    for n in range(5):
        resp = await stack.get()
        await stack.read(resp)
        assert resp.headers["Cache-Status"] == "miss", n
    last = await stack.get()
    assert last.headers["Cache-Status"] == "stored"
    assert len(stack.upstream.requests) == 6


async def test_vary_is_honoured_per_request_header_value(make_stack: MakeStack) -> None:
    stack = await make_stack()
    stack.upstream.script(
        json_reply({"tenant": "a"}, headers={"Vary": "X-Tenant"}),
        json_reply({"tenant": "b"}, headers={"Vary": "X-Tenant"}),
    )
    a = await stack.get(**{"X-Tenant": "a"})
    assert await stack.json(a) == {"tenant": "a"}
    b = await stack.get(**{"X-Tenant": "b"})
    assert await stack.json(b) == {"tenant": "b"} and b.headers["X-PROXY-CACHE"] == "miss"
    b_again = await stack.get(**{"x-tenant": "b"})
    assert await stack.json(b_again) == {"tenant": "b"} and b_again.headers["X-PROXY-CACHE"] == "hit"
    assert len(stack.upstream.requests) == 2


async def test_the_proxys_own_cors_vary_does_not_defeat_caching(make_stack: MakeStack) -> None:
    stack = await make_stack()
    first = await stack.get(Origin="https://app.example")
    await stack.read(first)
    hit = await stack.get(Origin="https://other.example")
    await stack.read(hit)
    assert hit.headers["X-PROXY-CACHE"] == "hit"
    assert hit.headers["Access-Control-Allow-Origin"] == "https://other.example"  # this request's origin
    assert len(stack.upstream.requests) == 1


async def test_responses_larger_than_the_object_limit_are_not_stored(make_stack: MakeStack) -> None:
    stack = await make_stack(HTTP_CACHE_MAX_OBJECT_BYTES="100")
    stack.upstream.always(json_reply({"data": "x" * 200}))
    for _ in range(2):
        resp = await stack.get()
        assert len(await stack.read(resp)) > 100
        assert resp.headers["X-PROXY-CACHE"] == "miss" and resp.headers["Cache-Status"] == "miss"
    small = await make_stack(HTTP_CACHE_MAX_OBJECT_BYTES="100")
    small.upstream.always(json_reply({"data": "x"}))
    for _ in range(2):
        await small.read(await small.get())
    assert len(stack.upstream.requests) == 3  # the small answer was stored once and hit once


async def test_one_project_never_sees_another_projects_cached_answer(make_stack: MakeStack) -> None:
    stack = await make_stack()
    other_project, _, other_token = await stack.add_project("other")
    stack.upstream.script(json_reply({"owner": "acme"}), json_reply({"owner": "other"}))

    mine = await stack.get()
    assert await stack.json(mine) == {"owner": "acme"}
    theirs = await stack.get(token=other_token)
    assert await stack.json(theirs) == {"owner": "other"} and theirs.headers["X-PROXY-CACHE"] == "miss"
    theirs_again = await stack.get(token=other_token)
    assert await stack.json(theirs_again) == {"owner": "other"}
    assert theirs_again.headers["X-PROXY-CACHE"] == "hit"
    assert other_project in theirs.headers["X-PROXY-CACHE-KEY"]
    assert theirs.headers["X-PROXY-CACHE-KEY"] != mine.headers["X-PROXY-CACHE-KEY"]
    assert len(stack.upstream.requests) == 2


async def test_if_none_match_on_a_hit_with_the_stored_etag_answers_304(make_stack: MakeStack) -> None:
    stack = await make_stack()
    stack.upstream.always(json_reply(MODELS, headers={"ETag": '"models-v1"', "Cache-Control": "max-age=60"}))
    first = await stack.get()
    await stack.read(first)

    same = await stack.get(**{"If-None-Match": '"models-v1"'})
    other = await stack.get(**{"If-None-Match": '"models-v0"'})

    assert same.status == 304 and await stack.read(same) == b""
    assert same.headers["Cache-Status"] == "conditional-hit" and same.headers["ETag"] == '"models-v1"'
    assert same.headers["Cache-Control"] == "max-age=60"
    assert other.status == 200 and other.headers["Cache-Status"] == "hit"
    assert await stack.json(other) == MODELS
    assert len(stack.upstream.requests) == 1


async def test_a_gzip_entry_is_not_served_to_a_client_that_does_not_accept_gzip(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack()
    stack.upstream.script(json_reply(MODELS, gzipped=True), json_reply(MODELS))
    zipped = await stack.client.get(
        "/v1/models", headers=stack.auth(**{"Accept-Encoding": "gzip"}), auto_decompress=False
    )
    assert zipped.headers["Content-Encoding"] == "gzip"
    await stack.read(zipped)
    plain = await stack.client.get(
        "/v1/models", headers=stack.auth(), skip_auto_headers=["Accept-Encoding"], auto_decompress=False
    )
    assert "Content-Encoding" not in plain.headers and await stack.json(plain) == MODELS
    assert plain.headers["X-PROXY-CACHE"] == "miss"
    assert len(stack.upstream.requests) == 2


async def test_cache_control_seconds_in_non_ascii_digits_are_malformed_not_a_500(
    make_stack: MakeStack,
) -> None:
    """ "²" and "٣" are digits to str.isdigit, not to int(): a client's (or the upstream's) max-age or
    max-stale spelled so is a malformed directive, ignored as RFC 9111 §1.2.2 asks, never a crash."""
    stack = await make_stack()
    stack.upstream.always(json_reply(MODELS, headers={"Cache-Control": "max-age=\u00b2"}))
    for directive in ("max-age=\u00b2", "max-stale=\u0663", "min-fresh=\u00b9\u00b2"):
        response = await stack.get(**{"Cache-Control": directive})
        assert response.status == 200, (directive, await response.text())
        assert await stack.json(response) == MODELS
