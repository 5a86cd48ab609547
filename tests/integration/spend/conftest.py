"""Whole servers (``build_app``) on SQLite or on a private PostgreSQL schema, in front of a fake upstream
that answers each chat request with the usage the request asks for: what the proxy accounts can then be
checked exactly against what the upstream reported.

A request says how it wants to be answered in ``x_reply`` (passed through untouched, as any unknown
parameter): ``{"usage": [prompt, completion, cached] | null, "content": "..."}``; ``stream: true`` gets SSE.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from llmproxy import config
from llmproxy.server.app import AUTHORITY, build_app
from llmproxy.store.base import Store
from llmproxy.store.postgres import PostgresStore
from llmproxy.store.sqlite import SqliteStore
from tests.fakes.upstream import FakeUpstream
from tests.settings import with_changes

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
MANAGEMENT_TOKEN = "test-management-token-spend-0123456789"
MANAGE = {"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}
PATH = "/v1/chat/completions"
PRICES = "test-model:\n  input: 2.0\n  output: 8.0\n  cached: 0.5\n"  # USD per 1M tokens


def chat_body(model: str, usage: list[int] | None, content: str, *, stream: bool = False) -> bytes:
    """A chat request asking the fake upstream for ``usage`` (None: report none) and ``content``."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": f"Say {content!r}, please."}],
        "x_reply": {"usage": usage, "content": content},
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def usage_object(usage: list[int]) -> dict[str, Any]:
    prompt, completion, cached = usage
    found: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        found["prompt_tokens_details"] = {"cached_tokens": cached, "audio_tokens": 0}
    return found


def reply_bytes(request_body: bytes) -> tuple[bytes, bool]:
    """(the body the fake upstream answers ``request_body`` with, whether it is SSE): deterministic, so a
    test can compute what the proxy must have estimated from it."""
    asked = json.loads(request_body)
    model, reply = asked["model"], asked["x_reply"]
    if not asked.get("stream"):
        answer: dict[str, Any] = {
            "id": "chatcmpl-spend",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply["content"]},
                    "finish_reason": "stop",
                }
            ],
        }
        if reply["usage"] is not None:
            answer["usage"] = usage_object(reply["usage"])
        return json.dumps(answer).encode(), False
    chunk = {"id": "chatcmpl-spend", "object": "chat.completion.chunk", "created": 1700000000, "model": model}
    frames = [
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "usage": None},
        *(
            {**chunk, "choices": [{"index": 0, "delta": {"content": word + " "}}], "usage": None}
            for word in reply["content"].split()
        ),
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None},
    ]
    if reply["usage"] is not None:
        frames.append({**chunk, "choices": [], "usage": usage_object(reply["usage"])})
    text = "".join(f"data: {json.dumps(frame)}\n\n" for frame in frames) + "data: [DONE]\n\n"
    return text.encode(), True


async def answer_as_asked(request: web.Request) -> web.StreamResponse:
    asked = await request.read()
    if not asked:  # GET /v1/models
        return web.json_response({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})
    body, stream = reply_bytes(asked)
    if not stream:
        return web.Response(body=body, content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(body)
    await resp.write_eof()
    return resp


class Server:
    """One running llm-proxy server (the whole app) and its store."""

    def __init__(self, client: TestClient, store: Store) -> None:
        self.client = client
        self.store = store

    async def flush(self) -> None:
        """Write this instance's batched counters and usage now, and read back the shared budget totals."""
        await self.client.server.app[AUTHORITY].flush()

    async def manage(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = await self.client.request(method, path, json=body, headers=MANAGE)
        assert resp.status < 300, await resp.text()
        return await resp.json() if resp.status != 204 else None

    async def add_token(
        self, project: dict[str, Any] | None = None, **fields: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(project, token) created through the API; a new project unless one is given."""
        if project is None:
            name = f"project-{uuid.uuid4().hex[:8]}"
            project = await self.manage(
                "POST", "/manage/projects", {"name": name, "api_key": "sk-upstream-key"}
            )
        token = await self.manage("POST", "/manage/tokens", {"project_id": project["id"], **fields})
        return project, token

    async def chat(self, token: str, body: bytes) -> ClientResponse:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        resp = await self.client.post(PATH, data=body, headers=headers)
        await resp.read()
        return resp


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        fake.always(answer_as_asked)
        yield fake


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[], Store]]:
    """A factory of stores on one database: a SQLite file, or a PostgreSQL schema of this test's own."""
    if request.param == "sqlite":
        yield lambda: SqliteStore(str(tmp_path / "llm-proxy.db"), None)
        return
    async with postgres_schema() as make:
        yield make


@pytest.fixture
async def postgres() -> AsyncIterator[Callable[[], Store]]:
    async with postgres_schema() as make:
        yield make


class postgres_schema:  # noqa: N801 (an async context manager used like a function)
    def __init__(self) -> None:
        self.schema = f"test_spend_{uuid.uuid4().hex}"

    async def __aenter__(self) -> Callable[[], Store]:
        return lambda: PostgresStore(PG_DSN, None, schema=self.schema, pool_size=4)

    async def __aexit__(self, *exc: object) -> None:
        admin = await asyncpg.connect(PG_DSN)
        try:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await admin.close()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix
    redis = Redis(host="127.0.0.1", port=6379)
    try:
        keys = [key async for key in redis.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


@pytest.fixture
def prices_file(tmp_path: Path) -> str:
    path = tmp_path / "prices.yaml"
    path.write_text(PRICES)
    return str(path)


@pytest.fixture
async def start_server(
    upstream: FakeUpstream, tmp_path: Path, prices_file: str
) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """``await start_server(store_factory, **env)``: one more server on that database."""
    clients: list[TestClient] = []

    async def start(
        make_store: Callable[[], Store], *, redis_prefix: str | None = None, **env: str
    ) -> Server:
        n = len(clients)
        values = {
            "MANAGEMENT_TOKEN": MANAGEMENT_TOKEN,
            "AUDIT_LOG_FILE": str(tmp_path / f"audit-{n}.log"),
            "UPSTREAM_BASE_URL": upstream.url,
            "PRICES_PATH": prices_file,
            "DEAD_LETTER_FILE": "off",
            "ACCESS_LOG": "off",
            **env,
        }
        store = make_store()
        settings = config.load(env=values)
        if redis_prefix is not None:  # Redis keys and channel of this test's own
            settings = with_changes(settings, auth={"redis_prefix": redis_prefix})
        app = build_app(settings, store=store)
        server = TestServer(app, host="127.0.0.1")
        # bodies as received, as `llm-proxy server` runs: TestServer(...) drops its keyword arguments
        # (aiohttp 3.14), start_server passes them on to the request handler
        await server.start_server(auto_decompress=False)
        client = TestClient(server)
        await client.start_server()
        clients.append(client)
        return Server(client, store)

    yield start
    for client in clients:
        await client.close()


async def poll(check: Callable[[], Awaitable[bool]], what: str, deadline_s: float = 30.0) -> None:
    """Until ``check()`` holds; AssertionError after ``deadline_s`` (a hang guard, not a timing claim)."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > deadline_s:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
