"""The whole server (``build_app``) with the response cache on, SQLite in tmp_path, the fake upstream behind.

``make_stack(**env)`` starts one server per call for the backend under test (every test runs against
the in-memory LRU and the shared Redis, under a key prefix of its own that is deleted afterwards); a
project and a token are created through the management API, as an operator would.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from llmproxy import config
from llmproxy.cache.storage import Entry
from llmproxy.server.app import STORE, build_app
from llmproxy.store.base import Store
from tests.fakes.upstream import FakeUpstream

MANAGEMENT_TOKEN = "test-management-token-cache-0123456789"
MANAGE = {"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}
SHARED_REDIS = "127.0.0.1:6379"


class Stack:
    """One running server, its fake upstream, and a project with a token."""

    def __init__(
        self, client: TestClient, upstream: FakeUpstream, settings: config.Settings, redis: Redis
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.settings = settings
        self.redis = redis
        self.project_id = ""
        self.token_id = ""
        self.token = ""

    @property
    def store(self) -> Store:
        return self.client.app[STORE]

    @property
    def key_prefix(self) -> str:
        return self.settings.cache.key_prefix

    async def add_project(self, name: str = "acme") -> tuple[str, str, str]:
        """A new project and a token for it: (project_id, token_id, raw token)."""
        resp = await self.client.post(
            "/manage/projects", json={"name": name, "api_key": "sk-upstream-" + uuid4().hex}, headers=MANAGE
        )
        assert resp.status == 201, await resp.text()
        project_id = (await resp.json())["id"]
        resp = await self.client.post("/manage/tokens", json={"project_id": project_id}, headers=MANAGE)
        assert resp.status == 201, await resp.text()
        token = await resp.json()
        return project_id, token["id"], token["token"]

    def auth(self, token: str | None = None, **headers: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}", **headers}

    async def get(self, path: str = "/v1/models", token: str | None = None, **headers: str) -> Any:
        return await self.client.get(path, headers=self.auth(token, **headers))

    async def post(self, body: bytes, path: str = "/v1/chat/completions", **headers: str) -> Any:
        headers.setdefault("Content-Type", "application/json")
        return await self.client.post(path, data=body, headers=self.auth(**headers))

    async def read(self, resp: ClientResponse, *, stored: bool | None = None) -> bytes:
        """The body of ``resp``; when it is being stored (the proxy says so, or ``stored`` for a stream,
        which it doesn't announce), also wait until it is: Redis writes run after the response, on a
        task of their own, so a client may be faster than them."""
        body = await resp.read()
        if stored is None:
            stored = resp.headers.get("Cache-Status") == "stored"
        if stored and self.settings.cache.backend == "redis":
            key = resp.headers["X-PROXY-CACHE-KEY"]

            async def landed() -> bool:
                raw = await self.redis.get(key)
                return raw is not None and msgspec.msgpack.decode(raw, type=Entry).body == body

            await poll(landed, f"the entry {key} in Redis")
        return body

    async def json(self, resp: ClientResponse) -> Any:
        return json.loads(await self.read(resp))


MakeStack = Callable[..., Awaitable[Stack]]


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def poll(check: Callable[[], Awaitable[bool]], what: str, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture(params=["in-memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture
async def make_stack(backend: str, upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[MakeStack]:
    clients: list[TestClient] = []
    prefixes: list[str] = []
    redis = Redis(host="127.0.0.1", port=6379)

    async def make(**env: str) -> Stack:
        n = len(clients)
        prefix = f"test:{uuid4().hex}:cache:"
        prefixes.append(prefix)
        values = {
            "MANAGEMENT_TOKEN": MANAGEMENT_TOKEN,
            "DATABASE_URL": f"sqlite:///{tmp_path}/llm-proxy-{n}.db",
            "AUDIT_LOG_FILE": str(tmp_path / f"audit-{n}.log"),
            "UPSTREAM_BASE_URL": upstream.url,
            "HTTP_CACHE_ENABLED": "true",
            "HTTP_CACHE_BACKEND": backend,
            "REDIS_ADDR": SHARED_REDIS,
            "REDIS_CACHE_KEY_PREFIX": prefix,
            **env,
        }
        settings = config.load(env=values)
        client = TestClient(TestServer(build_app(settings), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        stack = Stack(client, upstream, settings, redis)
        stack.project_id, stack.token_id, stack.token = await stack.add_project()
        return stack

    yield make
    for client in clients:
        await client.close()
    try:
        for prefix in prefixes:
            keys = [key async for key in redis.scan_iter(match=prefix + "*", count=1000)]
            if keys:
                await redis.delete(*keys)
    finally:
        await redis.aclose()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=6379)
    yield client
    await client.aclose()
