"""Server-sent events go through chunk by chunk, and a client hanging up stops the upstream stream."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from llmproxy.proxy.flow import Flow
from tests.fakes.upstream import Bulk, endless_sse, sse_chunks, sse_reply

STREAM_BODY = b'{"model": "gpt-4o-mini", "stream": true, "messages": []}'
JSON = {"Content-Type": "application/json"}


async def wait_for(condition, timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds, failing after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_sse_chunks_reach_the_client_before_the_upstream_has_finished(make_proxy):
    proxy = await make_proxy()
    frames = sse_chunks("Hel", "lo")
    rest = asyncio.Event()  # the upstream sends frame 0, then waits for this before the others
    proxy.upstream.script(sse_reply(frames, gates=[None, rest]))
    resp = await proxy.request("POST", "/v1/chat/completions", data=STREAM_BODY, headers=proxy.auth(**JSON))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"

    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=5)
    assert first == frames[0]
    assert not rest.is_set()  # so frame 0 came through while the upstream was still mid-stream

    rest.set()
    assert first + await resp.read() == b"".join(frames)


async def test_a_client_disconnect_aborts_the_upstream_stream(make_proxy):
    proxy = await make_proxy(observe=True)
    endless = endless_sse(interval=0.01)
    proxy.upstream.script(endless)
    resp = await proxy.request("POST", "/v1/chat/completions", data=STREAM_BODY, headers=proxy.auth(**JSON))
    await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=5)

    resp.close()  # hang up mid-stream
    await asyncio.wait_for(endless.aborted.wait(), timeout=5)
    await wait_for(lambda: proxy.flows)
    [flow] = proxy.flows
    assert flow.error == "client_disconnected"
    assert flow.status == 200
    assert flow.stream is True


async def test_a_stream_stalling_midway_is_cut_short_for_the_client(make_proxy):
    proxy = await make_proxy(observe=True, timeouts={"response_header": 0.3})
    frames = sse_chunks("a", "b")
    never = asyncio.Event()
    proxy.upstream.script(sse_reply(frames, gates=[None, never]))
    resp = await proxy.request("POST", "/v1/chat/completions", data=STREAM_BODY, headers=proxy.auth(**JSON))
    assert resp.status == 200
    assert await resp.content.readuntil(b"\n\n") == frames[0]
    with pytest.raises(aiohttp.ClientPayloadError):  # no terminating chunk: visibly incomplete
        await resp.read()
    await wait_for(lambda: proxy.flows)
    [flow] = proxy.flows
    assert flow.error == "upstream_timeout"
    assert flow.response_body == frames[0]


async def test_a_streamed_exchange_records_the_sse_text_as_sent(make_proxy):
    proxy = await make_proxy(observe=True)
    frames = sse_chunks("Hi", " there")
    proxy.upstream.script(sse_reply(frames))
    resp = await proxy.request("POST", "/v1/chat/completions", data=STREAM_BODY, headers=proxy.auth(**JSON))
    assert await resp.read() == b"".join(frames)
    await wait_for(lambda: proxy.flows)
    [flow] = proxy.flows
    assert flow.stream is True
    assert flow.error is None
    assert flow.response_body == b"".join(frames)
    assert flow.request_body == STREAM_BODY


async def test_a_client_that_stops_reading_holds_the_upstream_back_then_gets_every_byte(make_proxy):
    """The relay writes each chunk from the upstream connection's callback; once the client's send buffer
    is full it stops reading the upstream until the client drains. So a client that stops reading stalls
    the upstream (the proxy holds a bounded amount, not the answer) and still gets the body intact."""
    proxy = await make_proxy()
    piece = bytes(range(256)) * 256  # 64 KiB
    pieces = 2048  # 128 MiB: far more than the sockets and buffers between upstream and client hold
    large = Bulk(piece, pieces)
    proxy.upstream.script(large)
    resp = await proxy.request("POST", "/v1/chat/completions", data=STREAM_BODY, headers=proxy.auth(**JSON))
    assert resp.status == 200
    last, stable_since = -1, asyncio.get_running_loop().time()
    for _ in range(200):  # until the upstream has sent nothing more for 0.5 s (at most 10 s)
        await asyncio.sleep(0.05)
        now = asyncio.get_running_loop().time()
        if large.sent != last:
            last, stable_since = large.sent, now
        elif now - stable_since >= 0.5:
            break
    assert 0 < large.sent < large.size // 2, large.sent  # held back, far short of the end
    body = await resp.read()
    assert len(body) == len(piece) * pieces and body == piece * pieces


async def test_a_fault_of_ours_while_piping_is_an_internal_error_not_blamed_on_the_upstream(
    make_proxy, monkeypatch
):
    """A chunk the relay fails to handle (here: the capture raising) is written from the upstream
    connection's callback, where llhttp would wrap the error as an invalid upstream answer: the event must
    say internal_error, the client see a cut-short stream, the upstream connection be closed."""
    proxy = await make_proxy(observe=True)
    frames = sse_chunks("a", "b")
    rest = asyncio.Event()
    proxy.upstream.script(sse_reply(frames, gates=[None, rest]))
    feed = Flow.feed
    fed: list[bytes] = []

    def failing_feed(self: Flow, chunk: bytes) -> None:
        if fed:
            raise RuntimeError("capture failed")
        fed.append(chunk)
        feed(self, chunk)

    monkeypatch.setattr(Flow, "feed", failing_feed)
    resp = await proxy.request("POST", "/v1/chat/completions", data=STREAM_BODY, headers=proxy.auth(**JSON))
    assert resp.status == 200
    assert await resp.content.readuntil(b"\n\n") == frames[0]
    rest.set()  # the next frames reach the pipe, whose first feed raises
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    await wait_for(lambda: proxy.flows)
    [flow] = proxy.flows
    assert flow.error == "internal_error"
