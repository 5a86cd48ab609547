"""Slow clients hold nothing for long: CLIENT_HEADER_TIMEOUT, CLIENT_BODY_TIMEOUT, CLIENT_KEEPALIVE_TIMEOUT."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from llmproxy.metrics import BadRequests
from llmproxy.server.edge import EdgeRunner
from tests.integration.edge.conftest import (
    CHAT,
    StartEdge,
    closed_within,
    poll,
    read_response,
    serve,
)
from tests.integration.manage.support import AUTH, make_settings

SHORT = {"CLIENT_HEADER_TIMEOUT": "300ms", "CLIENT_BODY_TIMEOUT": "300ms", "CLIENT_KEEPALIVE_TIMEOUT": "60s"}


async def _dribble_head(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, first: bytes) -> bool:
    """Send ``first``, then one header line every 0.2 s (20 at most): whether the server hung up meanwhile."""
    writer.write(first)
    for i in range(20):
        if await closed_within(reader, 0.2):
            return True
        try:
            writer.write(f"X-Slow-{i}: 1\r\n".encode())
            await writer.drain()
        except ConnectionError:
            return True
    return False


async def test_a_request_head_sent_one_line_at_a_time_is_cut_off_by_the_header_timeout(
    start_edge: StartEdge,
) -> None:
    edge = await start_edge(**SHORT)
    reader, writer = await edge.connect()
    assert await _dribble_head(writer, reader, b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n")
    writer.close()
    assert edge.upstream.requests == []
    assert (await edge.metrics())["bad_requests"]["timeout"] == 1


async def test_a_keep_alive_request_head_is_timed_from_its_first_byte(start_edge: StartEdge) -> None:
    edge = await start_edge(**SHORT)
    reader, writer = await edge.connect()
    writer.write(b"GET /health HTTP/1.1\r\nHost: proxy\r\n\r\n")
    assert (await read_response(reader)).status == 200
    await asyncio.sleep(0.5)  # idle longer than the header timeout: that is keep-alive, not a slow head
    assert not await closed_within(reader, 0.01)
    assert await _dribble_head(writer, reader, b"GET /health HTTP/1.1\r\n")
    writer.close()


async def test_a_connection_that_never_sends_a_request_is_closed_by_the_header_timeout(
    start_edge: StartEdge,
) -> None:
    edge = await start_edge(**SHORT)
    reader, writer = await edge.connect()
    assert await closed_within(reader, 3.0)
    writer.close()
    assert (await edge.metrics())["bad_requests"]["timeout"] == 0  # nothing was sent: not a bad request


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(
    start_edge: StartEdge,
) -> None:
    edge = await start_edge(CLIENT_KEEPALIVE_TIMEOUT="300ms")
    reader, writer = await edge.connect()
    writer.write(b"GET /health HTTP/1.1\r\nHost: proxy\r\n\r\n")
    assert (await read_response(reader)).status == 200
    assert await closed_within(reader, 3.0)
    writer.close()


async def test_a_stalled_body_read_whole_gets_408_and_nothing_is_forwarded(start_edge: StartEdge) -> None:
    edge = await start_edge(**SHORT)
    reader, writer = await edge.connect()
    head = edge.head("POST", "/v1/chat/completions", "Content-Type: application/json", "Content-Length: 100")
    writer.write(head + CHAT[:10])
    response = await read_response(reader, timeout=3.0)
    assert response.status == 408
    assert response.json()["error"]["code"] == "request_timeout"
    assert await closed_within(reader, 3.0)
    writer.close()
    assert edge.upstream.requests == [] and edge.upstream.dropped == 0


async def test_a_stalled_body_streamed_upstream_gets_408_and_the_upstream_exchange_is_aborted(
    start_edge: StartEdge,
) -> None:
    edge = await start_edge(**SHORT)
    reader, writer = await edge.connect()
    head = edge.head(
        "POST", "/v1/chat/completions", "Content-Type: application/json", "Transfer-Encoding: chunked",
        "X-Request-ID: stalled-stream",
    )  # fmt: skip
    writer.write(head + b"%x\r\n%s\r\n" % (len(CHAT), CHAT))  # one chunk, then nothing
    response = await read_response(reader, timeout=3.0)
    assert response.status == 408
    assert response.json()["error"]["code"] == "request_timeout"
    writer.close()
    assert await poll(lambda: edge.upstream.dropped == 1)  # the upstream saw its connection closed
    event = await edge.event("stalled-stream")
    assert (event["status"], event["error"]) == (408, "request_timeout")


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/manage/projects", (f"Authorization: {AUTH['Authorization']}", "Content-Type: application/json")),
        ("/admin/login", ("Content-Type: application/x-www-form-urlencoded",)),
    ],
)
async def test_a_stalled_management_or_admin_body_gets_408(
    start_edge: StartEdge, path: str, headers: tuple[str, ...]
) -> None:
    edge = await start_edge(**SHORT)
    reader, writer = await edge.connect()
    writer.write(edge.head("POST", path, *headers, "Content-Length: 100", token=False) + b"name=sl")
    response = await read_response(reader, timeout=3.0)
    assert response.status == 408
    assert response.json()["error"]["code"] == "request_timeout"
    writer.close()


async def test_a_body_held_back_by_a_slow_reader_is_not_a_stalled_client(tmp_path) -> None:
    """The server stops reading while its handler is behind (TCP pushes back): that is no client stall."""

    async def slow_reader(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)  # > CLIENT_BODY_TIMEOUT, while the body waits in the socket buffers
        return web.Response(text=str(len(await request.read())))

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/upload", slow_reader)
    runner = EdgeRunner(app, make_settings(tmp_path, **SHORT).server, BadRequests(), access_log=None)
    port = await serve(runner)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        size = 32 * 1024 * 1024  # far more than the socket buffers hold: the client is held back too
        writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"x" * size)
        response = await read_response(reader, timeout=10.0)
        writer.close()
        assert (response.status, response.body) == (200, str(size).encode())
    finally:
        await runner.cleanup()
