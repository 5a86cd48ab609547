"""A client that disconnects cancels its upstream request, whatever the request and wherever it waits:
the upstream connection is closed (never reused) and the event says ``client_disconnected``."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from tests.fakes.upstream import Reply
from tests.integration.edge.conftest import CHAT, StartEdge, poll

NEVER = asyncio.Event  # a fresh one per reply is never set: the reply waits until it is cancelled


def _headers_then_nothing(sent: asyncio.Event) -> Reply:
    """Status and headers of a JSON answer, then no body (the proxy waits for its first bytes)."""

    async def reply(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "100"})
        await resp.prepare(request)
        sent.set()
        await NEVER().wait()
        return resp

    return reply


def _one_frame_then_nothing(sent: asyncio.Event) -> Reply:
    """An event stream that sends one frame, then waits (the proxy waits for the next)."""

    async def reply(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n')
        sent.set()
        await NEVER().wait()
        return resp

    return reply


def _nothing(sent: asyncio.Event) -> Reply:
    """No answer at all (the proxy waits for the headers)."""

    async def reply(request: web.Request) -> web.StreamResponse:
        sent.set()
        await NEVER().wait()
        raise AssertionError("unreachable")

    return reply


JSON = ("Content-Type: application/json", f"Content-Length: {len(CHAT)}")
CHUNKED = ("Content-Type: application/json", "Transfer-Encoding: chunked")
CASES = {
    "no body, waiting for headers": ("GET", "/v1/models", (), b"", _nothing, 499),
    "body read whole, waiting for headers": ("POST", "/v1/chat/completions", JSON, CHAT, _nothing, 499),
    "body streamed, waiting for headers": (
        "POST", "/v1/chat/completions", CHUNKED, b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT), CHAT), _nothing, 499,
    ),
    "waiting for the body": ("POST", "/v1/chat/completions", JSON, CHAT, _headers_then_nothing, 499),
    "stream, waiting for the next chunk": (
        "POST", "/v1/chat/completions", JSON, CHAT, _one_frame_then_nothing, 200,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
async def test_a_client_that_disconnects_cancels_its_upstream_request(
    start_edge: StartEdge, case: str
) -> None:
    method, path, headers, body, reply, status = CASES[case]
    edge = await start_edge()
    upstream_waits = asyncio.Event()
    edge.upstream.script(reply(upstream_waits))
    reader, writer = await edge.connect()
    writer.write(edge.head(method, path, *headers, "X-Request-ID: gone-client") + body)
    await writer.drain()
    assert await poll(upstream_waits.is_set)

    writer.close()
    assert await poll(lambda: edge.upstream.dropped == 1), "the upstream request outlived its client"
    event = await edge.event("gone-client")
    assert (event["error"], event["status"]) == ("client_disconnected", status)


async def test_a_client_gone_while_its_token_is_checked_is_not_forwarded(start_edge: StartEdge) -> None:
    edge = await start_edge()
    reader, writer = await edge.connect()
    # aiohttp answers "100 Continue" as it starts the request, before the proxy checks the token (a
    # database read the first time): hanging up on it lands while the token is being checked
    writer.write(edge.head("GET", "/v1/models", "Expect: 100-continue", "X-Request-ID: gone-early"))
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 Continue")
    writer.close()
    event = await edge.event("gone-early")
    assert (event["error"], event["status"]) == ("client_disconnected", 499)
    assert edge.upstream.requests == []
