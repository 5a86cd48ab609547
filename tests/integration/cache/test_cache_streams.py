"""Event streams in the cache: only complete ones, only when enabled and asked for, replayed byte for byte."""

from __future__ import annotations

import json

from aiohttp import ClientPayloadError, web

from tests.fakes.upstream import OPENAI_HEADERS, Reply, sse_chunks, sse_reply
from tests.integration.cache.conftest import MakeStack

STREAM_BODY = json.dumps(
    {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
).encode()
OPT_IN = {"Cache-Control": "public, max-age=60", "Accept": "text/event-stream"}


def broken_stream(frames: list[bytes]) -> Reply:
    """An event stream whose connection is dropped after the first frames, before the end."""

    async def reply(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **OPENAI_HEADERS})
        await resp.prepare(request)
        for frame in frames:
            await resp.write(frame)
        assert request.transport is not None
        request.transport.close()
        return resp

    return reply


async def test_an_opted_in_complete_stream_is_replayed_with_the_same_bytes(make_stack: MakeStack) -> None:
    stack = await make_stack(HTTP_CACHE_STREAM_RESPONSES="true")
    frames = sse_chunks("Hel", "lo", "!")
    stack.upstream.always(sse_reply(frames))

    first = await stack.post(STREAM_BODY, **OPT_IN)
    first_body = await stack.read(first, stored=True)
    second = await stack.post(STREAM_BODY, **OPT_IN)
    second_body = await stack.read(second)

    assert first_body == b"".join(frames)
    assert second.status == 200 and second_body == first_body
    assert first.headers["Cache-Status"] == "miss"  # a stream's size is unknown until its end
    assert second.headers["Cache-Status"] == "hit" and second.headers["X-PROXY-CACHE"] == "hit"
    assert second.headers["Content-Type"] == "text/event-stream"
    assert len(stack.upstream.requests) == 1


async def test_a_stream_without_opt_in_is_not_cached(make_stack: MakeStack) -> None:
    stack = await make_stack(HTTP_CACHE_STREAM_RESPONSES="true")
    stack.upstream.always(sse_reply(sse_chunks("a")))
    # a GET needs no opt-in to be cached, except when the answer is a stream
    for _ in range(2):
        resp = await stack.get("/v1/responses/resp_1", Accept="text/event-stream")
        await stack.read(resp)
        assert resp.headers["Cache-Status"] == "miss"
    assert len(stack.upstream.requests) == 2


async def test_streams_are_not_cached_unless_stream_caching_is_enabled(make_stack: MakeStack) -> None:
    stack = await make_stack()  # HTTP_CACHE_STREAM_RESPONSES defaults to false
    stack.upstream.always(sse_reply(sse_chunks("a")))
    for _ in range(2):
        resp = await stack.post(STREAM_BODY, **OPT_IN)
        await stack.read(resp)
        assert resp.headers["X-PROXY-CACHE"] == "miss"
    assert len(stack.upstream.requests) == 2


async def test_a_stream_cut_short_by_the_upstream_is_never_stored(make_stack: MakeStack) -> None:
    stack = await make_stack(HTTP_CACHE_STREAM_RESPONSES="true")
    frames = sse_chunks("one", "two", "three")
    stack.upstream.script(broken_stream(frames[:2]), sse_reply(frames))

    cut = await stack.post(STREAM_BODY, **OPT_IN)
    try:
        cut_body: bytes | None = await cut.read()
    except ClientPayloadError:  # the proxy drops the client's connection: the answer is visibly short
        cut_body = None
    assert cut_body != b"".join(frames)
    whole = await stack.post(STREAM_BODY, **OPT_IN)
    whole_body = await stack.read(whole, stored=True)

    assert whole.headers["X-PROXY-CACHE"] == "miss"
    assert whole_body == b"".join(frames)
    again = await stack.post(STREAM_BODY, **OPT_IN)
    assert await stack.read(again) == whole_body and again.headers["X-PROXY-CACHE"] == "hit"
    assert len(stack.upstream.requests) == 2


async def test_a_stream_longer_than_the_object_limit_is_not_stored(make_stack: MakeStack) -> None:
    stack = await make_stack(HTTP_CACHE_STREAM_RESPONSES="true", HTTP_CACHE_MAX_OBJECT_BYTES="300")
    frames = sse_chunks("x" * 100, "y" * 100, "z" * 100)
    stack.upstream.always(sse_reply(frames))
    for _ in range(2):
        resp = await stack.post(STREAM_BODY, **OPT_IN)
        assert await stack.read(resp) == b"".join(frames)
        assert resp.headers["X-PROXY-CACHE"] == "miss"
    assert len(stack.upstream.requests) == 2
