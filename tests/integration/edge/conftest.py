"""The whole server (``build_app``) on loopback, run by the same runner `llm-proxy server` uses, with a
project and a token, in front of the fake upstream; clients speak raw HTTP/1.1 over sockets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from llmproxy.server.app import build_app
from llmproxy.server.routing import route_proxy_first
from llmproxy.server.run import make_runner
from tests.fakes.upstream import FakeUpstream
from tests.integration.manage.support import AUTH, UPSTREAM_KEY, make_settings

CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


class Response:
    """A response as read off the socket."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class Edge:
    """One running server: its address, its token, the upstream behind it and its event log."""

    def __init__(self, port: int, token: str, upstream: FakeUpstream, events_file: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.token = token
        self.upstream = upstream
        self.events_file = events_file

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    def head(self, method: str, path: str, *headers: str, token: bool = True) -> bytes:
        """A request head (no body); ``headers`` as ``"Name: value"`` lines."""
        lines = [f"{method} {path} HTTP/1.1", "Host: proxy"]
        if token:
            lines.append(f"Authorization: Bearer {self.token}")
        return ("\r\n".join([*lines, *headers]) + "\r\n\r\n").encode()

    async def metrics(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/metrics") as r:
            return await r.json()

    async def prometheus(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/metrics/prometheus") as r:
            return await r.text()

    async def event(self, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The event of ``request_id`` once the file dispatcher wrote it (polled, bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.events_file.read_text().splitlines() if self.events_file.exists() else []
            found = [e for e in map(json.loads, lines) if e["request_id"] == request_id]
            if found or time.monotonic() > deadline:
                assert len(found) == 1, found
                return found[0]
            await asyncio.sleep(0.02)


async def read_response(reader: asyncio.StreamReader, timeout: float = 5.0) -> Response:
    """One response (framed by Content-Length) read within ``timeout``."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Response(int(status_line.split(" ")[1]), headers, body)


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> bool:
    """Whether the server closed the connection within ``timeout`` (bytes it sends are read past)."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def poll(condition: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


StartEdge = Callable[..., Awaitable[Edge]]


async def serve(runner: web.AppRunner) -> int:
    """Start ``runner`` on a loopback port, as `llm-proxy server` starts it; its port."""
    await runner.setup()
    route_proxy_first(runner)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return int(runner.addresses[0][1])


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture
async def start_edge(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[StartEdge]:
    runners: list[web.AppRunner] = []

    async def start(**env: str) -> Edge:
        """A started server; ``env`` adds settings (SPEC names) to the test defaults."""
        events_file = tmp_path / "events.jsonl"
        settings = make_settings(
            tmp_path,
            UPSTREAM_BASE_URL=upstream.url,
            FILE_EVENT_LOG=str(events_file),
            DISPATCHER_FLUSH_INTERVAL="20ms",
            SHUTDOWN_TIMEOUT="1s",
            **env,
        )
        runner = make_runner(build_app(settings), settings.server)
        runners.append(runner)
        port = await serve(runner)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(headers=AUTH) as session:
            async with session.post(
                f"{base}/manage/projects", json={"name": "edge", "api_key": UPSTREAM_KEY}
            ) as r:
                project = await r.json()
            async with session.post(f"{base}/manage/tokens", json={"project_id": project["id"]}) as r:
                token = (await r.json())["token"]
        return Edge(port, token, upstream, events_file)

    yield start
    for runner in runners:
        await runner.cleanup()
