"""Several instances of the whole server (``build_app`` each) sharing one SQLite file and one Redis, on loopback.

As behind a load balancer: what one instance is told through the management API, every instance must
honour. What they keep in Redis lives under a prefix of the test's own, deleted afterwards, so runs in
parallel never see each other's keys or invalidations.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from llmproxy import config
from llmproxy.server.app import build_app
from tests.fakes.upstream import FakeUpstream
from tests.settings import with_changes

MANAGEMENT_TOKEN = "test-management-token-cluster-0123456789"
MANAGE = {"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}
SHARED_REDIS = "127.0.0.1:6379"


class Instance:
    """One running server of the cluster."""

    def __init__(self, client: TestClient, settings: config.Settings) -> None:
        self.client = client
        self.settings = settings

    async def proxy(self, token: str) -> ClientResponse:
        """A proxied request (GET /v1/models), its body read."""
        resp = await self.client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
        await resp.read()
        return resp

    async def manage(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = await self.client.request(method, path, json=body, headers=MANAGE)
        assert resp.status < 300, await resp.text()
        return await resp.json() if resp.status != 204 else None

    async def ready(self) -> tuple[int, dict[str, Any]]:
        resp = await self.client.get("/ready")
        return resp.status, await resp.json()


class Cluster:
    """The instances started so far, and a way to add a project and a token through the first one."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.instances: list[Instance] = []

    async def add_token(self, **limits: Any) -> tuple[str, str, str]:
        """A new project and a token with ``limits``, created through instance 0: (project, token id, raw)."""
        first = self.instances[0]
        name = f"project-{uuid4().hex[:8]}"
        project = await first.manage("POST", "/manage/projects", {"name": name, "api_key": "sk-upstream-key"})
        token = await first.manage("POST", "/manage/tokens", {"project_id": project["id"], **limits})
        return project["id"], token["id"], token["token"]


MakeInstance = Callable[..., Awaitable[Instance]]


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def poll(check: Callable[[], Awaitable[bool]], what: str, deadline_s: float = 5.0) -> float:
    """Seconds until ``check()`` held (checked every 5 ms); AssertionError after ``deadline_s``."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > deadline_s:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def cluster() -> Cluster:
    return Cluster(prefix=f"test:{uuid4().hex}:")


@pytest.fixture
async def start_instance(
    cluster: Cluster, upstream: FakeUpstream, tmp_path: Path
) -> AsyncIterator[MakeInstance]:
    """``await start_instance(**env)``: one more server on the cluster's database (REDIS_ADDR defaults to the
    shared Redis); its keys and channel are under the cluster's prefix."""
    redis = Redis(host="127.0.0.1", port=6379)

    async def start(**env: str) -> Instance:
        n = len(cluster.instances)
        values = {
            "MANAGEMENT_TOKEN": MANAGEMENT_TOKEN,
            "DATABASE_URL": f"sqlite:///{tmp_path}/llm-proxy.db",
            "AUDIT_LOG_FILE": str(tmp_path / f"audit-{n}.log"),
            "UPSTREAM_BASE_URL": upstream.url,
            "REDIS_ADDR": SHARED_REDIS,
            **env,
        }
        settings = with_changes(config.load(env=values), auth={"redis_prefix": cluster.prefix})
        client = TestClient(TestServer(build_app(settings), host="127.0.0.1"))
        await client.start_server()
        instance = Instance(client, settings)
        cluster.instances.append(instance)
        return instance

    yield start
    for instance in cluster.instances:
        await instance.client.close()
    try:
        keys = [key async for key in redis.scan_iter(match=cluster.prefix + "*", count=1000)]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()
