"""Slow clients hold nothing for long: CLIENT_HEADER_TIMEOUT, CLIENT_BODY_TIMEOUT, CLIENT_KEEPALIVE_TIMEOUT,
CLIENT_SEND_TIMEOUT."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from aiohttp import web

from llmproxy.metrics import BadRequests
from llmproxy.server.edge import EdgeRunner
from tests.fakes.upstream import SSE_PIECE, Bulk
from tests.integration.edge.conftest import (
    CHAT,
    StartEdge,
    closed_within,
    poll,
    read_response,
    serve,
)
from tests.integration.manage.support import AUTH, make_settings

JSON_HEAD = ("Content-Type: application/json",)
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


@pytest.mark.parametrize("content_type", ["text/event-stream", "application/json"])
async def test_a_client_that_stops_reading_is_cut_off_by_the_send_timeout_and_its_upstream_released(
    start_edge: StartEdge, content_type: str
) -> None:
    """A client that takes none of its answer for CLIENT_SEND_TIMEOUT is disconnected: its upstream
    connection is closed (no stream, upstream socket or pool slot held for ever), its event says so."""
    edge = await start_edge(CLIENT_SEND_TIMEOUT="1s")
    bulk = Bulk(SSE_PIECE, 1024, content_type)  # 64 MiB: far more than the buffers between
    edge.upstream.script(bulk)
    reader, writer = await edge.connect()
    head = edge.head(
        "POST", "/v1/chat/completions", *JSON_HEAD, f"Content-Length: {len(CHAT)}", "X-Request-ID: stopped"
    )
    writer.write(head + CHAT)
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    stopped = time.monotonic()
    # ...and reads nothing more (asyncio's reader buffers 128 KiB at most, then stops taking bytes)
    assert await poll(lambda: edge.upstream.dropped == 1, timeout=15.0)  # the proxy closed its connection
    assert time.monotonic() - stopped >= 1.0  # not before the timeout
    assert 0 < bulk.sent < bulk.size  # the upstream was held back, then let go
    assert await closed_within(reader, 3.0)  # and the client's
    writer.close()
    event = await edge.event("stopped")
    assert (event["status"], event["error"]) == (200, "client_disconnected")
    assert (await edge.metrics())["bad_requests"]["send_timeout"] == 1


async def test_a_client_that_reads_in_bursts_gets_its_whole_answer(start_edge: StartEdge) -> None:
    """Taking bytes is progress: only a client that takes none for CLIENT_SEND_TIMEOUT is cut off. This
    one reads nothing for 200 ms, then what it has up to 4 MiB, again and again: while it waits, bytes
    wait for it (the server's send buffers are full), for longer than the timeout in all (64 MiB at 4 MiB
    a burst: 16 bursts, 3.2 s at least, whatever the machine's speed)."""
    edge = await start_edge(CLIENT_SEND_TIMEOUT="1500ms")
    pieces = 1024  # 64 MiB
    edge.upstream.script(Bulk(SSE_PIECE, pieces))
    sock = socket.socket()
    received = bytearray()
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", edge.port))
        head = edge.head(
            "POST", "/v1/chat/completions", *JSON_HEAD, f"Content-Length: {len(CHAT)}", "X-Request-ID: bursts"
        )
        await asyncio.get_running_loop().sock_sendall(sock, head + CHAT)
        started = time.monotonic()
        for _ in range(300):  # 60 s at most
            await asyncio.sleep(0.2)
            burst = len(received) + (4 << 20)
            while len(received) < burst:
                try:
                    chunk = sock.recv(1 << 20)
                except BlockingIOError:
                    break
                assert chunk, "connection closed"
                received += chunk
            if received.endswith(b"\r\n0\r\n\r\n"):
                break
    finally:
        sock.close()
    assert time.monotonic() - started > 1.5  # the waits added up to more than the timeout
    assert received.count(b"data: ") == pieces and received.count(b"x") >= pieces * (65536 - 8)
    event = await edge.event("bursts")
    assert (event["status"], event["error"]) == (200, None)
    assert (await edge.metrics())["bad_requests"]["send_timeout"] == 0


async def _large_answer_app(
    tmp_path: Path, send_timeout: str, size: int
) -> tuple[web.AppRunner, int, BadRequests]:
    """A plain aiohttp app behind EdgeRunner answering GET /large with ``size`` bytes written at once."""
    app = web.Application()

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * size)

    app.router.add_get("/large", large)
    bad_requests = BadRequests()
    settings = make_settings(tmp_path, CLIENT_SEND_TIMEOUT=send_timeout).server
    runner = EdgeRunner(app, settings, bad_requests, access_log=None)
    return runner, await serve(runner), bad_requests


async def test_any_answer_the_client_does_not_take_is_cut_off_by_the_send_timeout(tmp_path) -> None:
    """The send timeout is the connection's, not the proxy's: a large answer of any handler too. The
    connection is reset (the kernel frees what it holds for the client at once)."""
    runner, port, bad_requests = await _large_answer_app(tmp_path, "500ms", 64 * 1024 * 1024)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /large HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await poll(lambda: bad_requests.counts["send_timeout"] == 1, timeout=10.0)
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(5.0):
                while await reader.read(1 << 20):
                    pass
        writer.close()
    finally:
        await runner.cleanup()


async def test_a_slow_steady_reader_of_an_answer_written_at_once_is_not_cut_off(tmp_path) -> None:
    """An answer written at once (a cache hit, a large /manage list) waits whole for the client: one that
    takes part of it at every look is not cut off, although the rest waits far longer than the timeout."""
    size = 32 * 1024 * 1024
    runner, port, bad_requests = await _large_answer_app(tmp_path, "1s", size)
    try:
        sock = socket.socket()
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        received = 0
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, b"GET /large HTTP/1.1\r\nHost: x\r\n\r\n")
            started = time.monotonic()
            async with asyncio.timeout(60.0):
                while received < size:  # 256 KiB every 50 ms: ~5 MB/s, ~6 s in all
                    chunk = await loop.sock_recv(sock, 256 * 1024)
                    assert chunk, "connection closed"
                    received += len(chunk)
                    await asyncio.sleep(0.05)
        finally:
            sock.close()
        assert time.monotonic() - started > 3.0  # the answer waited for it far longer than the timeout
        assert received >= size and bad_requests.counts["send_timeout"] == 0
    finally:
        await runner.cleanup()
