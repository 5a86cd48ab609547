"""/metrics and /metrics/prometheus of the whole server (build_app): SQLite store, fake upstream, real Redis
and, for redis-streams, a real dispatcher worker process whose counters must reach the server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from llmproxy.config import Settings
from llmproxy.config_sections import ObservabilitySettings, PipelineSettings
from llmproxy.server.app import build_app, make_pipeline
from llmproxy.server.observability import Observability
from llmproxy.server.routing import route_proxy_first
from tests.fakes.upstream import FakeUpstream, error_reply
from tests.integration.manage.support import AUTH, MANAGEMENT_TOKEN, UPSTREAM_KEY, make_settings

CHAT = "/v1/chat/completions"
CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


class RunningProxy:
    """A started server with one project and one token, and ways to read its metrics."""

    def __init__(
        self, client: TestClient, settings: Settings, project: dict[str, Any], token: dict[str, Any]
    ) -> None:
        self.client = client
        self.settings = settings
        self.project = project
        self.token = token["token"]
        self.token_id = token["id"]
        self.base_url = str(client.make_url("")).rstrip("/")

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def chat(self, **kwargs: Any) -> int:
        kwargs.setdefault("headers", self.auth())
        async with self.client.post(CHAT, json=CHAT_BODY, **kwargs) as resp:
            await resp.read()
            return resp.status

    async def metrics(self) -> dict[str, Any]:
        async with self.client.get("/metrics") as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            return await resp.json()  # type: ignore[no-any-return]

    async def prometheus(self) -> str:
        async with self.client.get("/metrics/prometheus") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=")
            return await resp.text()

    def secrets(self) -> list[str]:
        return [self.token, self.token_id, self.project["id"], UPSTREAM_KEY, MANAGEMENT_TOKEN]


@contextlib.asynccontextmanager
async def running_proxy(tmp_path: Path, upstream: FakeUpstream, **env: str) -> AsyncIterator[RunningProxy]:
    """``build_app`` on loopback in front of ``upstream``; ``env`` as the server's environment."""
    settings = make_settings(tmp_path, UPSTREAM_BASE_URL=upstream.url, SHUTDOWN_TIMEOUT="10s", **env)
    async with TestClient(TestServer(build_app(settings), host="127.0.0.1", port=0)) as client:
        assert client.server.runner is not None
        route_proxy_first(client.server.runner)  # as `llm-proxy server` does: counted on the short way too
        async with client.post(
            "/manage/projects", json={"name": "metrics", "api_key": UPSTREAM_KEY}, headers=AUTH
        ) as r:
            assert r.status == 201, await r.text()
            project = await r.json()
        async with client.post("/manage/tokens", json={"project_id": project["id"]}, headers=AUTH) as r:
            assert r.status == 201, await r.text()
            token = await r.json()
        yield RunningProxy(client, settings, project, token)


async def poll(
    read: Callable[[], Awaitable[dict[str, Any]]],
    done: Callable[[dict[str, Any]], bool],
    timeout: float = 30.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        document = await read()
        if done(document) or time.monotonic() > deadline:
            return document
        await asyncio.sleep(0.1)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A unique key prefix; every key under it is deleted after the test."""
    prefix = f"test:{uuid.uuid4().hex}"
    yield prefix
    redis = Redis(host="127.0.0.1", port=6379)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- requests, errors, durations -------------------------------------------------------------------


async def test_forwarded_requests_are_counted_by_endpoint_and_status_class(tmp_path, upstream):
    async with running_proxy(tmp_path, upstream) as proxy:
        assert [await proxy.chat() for _ in range(3)] == [200, 200, 200]
        document = await proxy.metrics()
        text = await proxy.prometheus()
    assert document["requests"] == {"total": 3, "by_path": {CHAT: {"2xx": 3}}}
    assert document["errors"] == {"total": 0, "by_path": {}}
    [duration] = document["request_duration_seconds"]
    [ttfb] = document["upstream_ttfb_seconds"]
    assert (duration["path"], duration["status_class"], duration["count"]) == (CHAT, "2xx", 3)
    assert (ttfb["path"], ttfb["status_class"], ttfb["count"]) == (CHAT, "2xx", 3)
    assert 0 < ttfb["sum_seconds"] <= duration["sum_seconds"]
    lines = text.splitlines()
    assert 'llm_proxy_requests_total{path="/v1/chat/completions",status_class="2xx"} 3.0' in lines
    assert (
        'llm_proxy_request_duration_seconds_count{path="/v1/chat/completions",status_class="2xx"} 3.0'
        in lines
    )
    assert (
        'llm_proxy_upstream_ttfb_seconds_count{path="/v1/chat/completions",status_class="2xx"} 3.0' in lines
    )
    assert "llm_proxy_uptime_seconds " in text


async def test_a_refusal_and_an_upstream_error_count_as_errors(tmp_path, upstream):
    upstream.script(error_reply(429, "rate_limit_exceeded", "slow down"))
    async with running_proxy(tmp_path, upstream) as proxy:
        assert await proxy.chat(headers={}) == 401  # refused by the proxy: never reaches the upstream
        assert await proxy.chat() == 429  # the upstream's own error, passed through
        assert await proxy.chat() == 200
        document = await proxy.metrics()
        lines = (await proxy.prometheus()).splitlines()
    assert document["requests"] == {"total": 3, "by_path": {CHAT: {"2xx": 1, "4xx": 2}}}
    assert document["errors"] == {"total": 2, "by_path": {CHAT: {"4xx": 2}}}
    assert {(h["status_class"], h["count"]) for h in document["upstream_ttfb_seconds"]} == {
        ("2xx", 1),
        ("4xx", 1),
    }
    assert 'llm_proxy_errors_total{path="/v1/chat/completions",status_class="4xx"} 2.0' in lines
    assert len(upstream.requests) == 2


async def test_ids_in_paths_never_become_labels_and_unknown_paths_are_other(tmp_path, upstream):
    async with running_proxy(tmp_path, upstream) as proxy:
        async with proxy.client.get("/v1/files/file-abc123", headers=proxy.auth()) as resp:
            assert resp.status == 200
        async with proxy.client.get("/not/an/endpoint", headers=proxy.auth()) as resp:
            assert resp.status == 404
        document = await proxy.metrics()
        text = await proxy.prometheus()
    assert document["requests"]["by_path"] == {"/v1/files/*": {"2xx": 1}, "other": {"4xx": 1}}
    assert "file-abc123" not in text and "/not/an/endpoint" not in text


async def test_management_health_and_metrics_calls_are_not_proxy_requests(tmp_path, upstream):
    async with running_proxy(tmp_path, upstream) as proxy:  # project and token were created over /manage
        for path in ("/health", "/live", "/ready", "/manage/projects", "/metrics/prometheus"):
            async with proxy.client.get(path, headers=AUTH) as resp:
                assert resp.status == 200, path
        document = await proxy.metrics()
    assert document["requests"] == {"total": 0, "by_path": {}}


async def test_metrics_disabled_leaves_both_routes_absent(tmp_path, upstream):
    async with running_proxy(tmp_path, upstream, ENABLE_METRICS="false") as proxy:
        for path in ("/metrics", "/metrics/prometheus"):
            async with proxy.client.get(path) as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["code"] == "endpoint_not_allowed"
        assert await proxy.chat() == 200


async def test_no_token_key_or_id_appears_in_either_rendering(tmp_path, upstream):
    async with running_proxy(tmp_path, upstream, FILE_EVENT_LOG=str(tmp_path / "events.jsonl")) as proxy:
        await proxy.chat()
        await proxy.chat(headers={"Authorization": "Bearer sk-not-a-real-token-but-looks-like-one"})
        await proxy.chat(headers=AUTH)  # the management token sent to the proxy: refused
        renderings = json.dumps(await proxy.metrics()) + await proxy.prometheus()
        secrets = [*proxy.secrets(), "sk-not-a-real-token-but-looks-like-one"]
    assert [s for s in secrets if s in renderings] == []


# --- events and dispatchers ------------------------------------------------------------------------


async def test_in_memory_dispatcher_deliveries_reach_the_metrics(tmp_path, upstream):
    events = tmp_path / "events.jsonl"
    async with running_proxy(tmp_path, upstream, FILE_EVENT_LOG=str(events)) as proxy:
        for _ in range(4):
            assert await proxy.chat() == 200
        document = await poll(proxy.metrics, lambda d: d["dispatchers"].get("file", {}).get("delivered") == 4)
        lines = (await proxy.prometheus()).splitlines()
    assert document["events"]["published"] == 4
    assert document["events"]["dropped"] == 0
    assert document["dispatchers"]["file"]["delivered"] == 4
    assert document["dispatchers"]["file"]["lag"] == 0
    assert document["redis_up"] is None
    assert len(events.read_text().splitlines()) == 4
    assert 'llm_proxy_dispatcher_delivered_total{service="file"} 4.0' in lines
    assert "llm_proxy_events_published_total 4.0" in lines


async def test_redis_streams_worker_counters_reach_the_server(tmp_path, upstream, redis_prefix):
    events = tmp_path / "events.jsonl"
    env = {
        "LLM_PROXY_EVENT_BUS": "redis-streams",
        "REDIS_STREAM_KEY": f"{redis_prefix}:events",
        "DISPATCHER_SERVICES": "file",
        "DISPATCHER_WORKERS": "1",
        "FILE_EVENT_LOG": str(events),
    }
    async with running_proxy(tmp_path, upstream, **env) as proxy:
        # the worker's group is created at "$" when it starts: what was published before, it never sees
        started = await poll(proxy.metrics, lambda d: d["dispatchers"].get("file", {}).get("lag") is not None)
        assert started["dispatchers"]["file"]["lag"] == 0
        for _ in range(5):
            assert await proxy.chat() == 200
        document = await poll(
            proxy.metrics,
            lambda d: (
                d["dispatchers"].get("file", {}).get("delivered") == 5
                and d["dispatchers"]["file"]["lag"] == 0
            ),
        )
        lines = (await proxy.prometheus()).splitlines()
    file = document["dispatchers"]["file"]
    assert (file["delivered"], file["failed"], file["dead_lettered"], file["lag"], file["pending"]) == (
        5,
        0,
        0,
        0,
        0,
    )
    assert file["reports"] == 1
    assert document["redis_up"] is True
    assert document["events"]["published"] == 5
    assert document["events"]["stream_length"] == 5
    assert len(events.read_text().splitlines()) == 5
    assert 'llm_proxy_dispatcher_delivered_total{service="file"} 5.0' in lines
    assert 'llm_proxy_dispatcher_lag{service="file"} 0.0' in lines
    assert "llm_proxy_redis_up 1.0" in lines


async def test_dispatcher_totals_are_the_sum_of_every_worker_report(tmp_path, upstream, redis_prefix):
    stream = f"{redis_prefix}:events"
    redis = Redis(host="127.0.0.1", port=6379)
    try:
        await redis.hset(
            f"{stream}:dispatcher-stats",
            mapping={
                "file:host-a-100": json.dumps(
                    {"delivered": 5, "retried": 1, "failed": 0, "dead_lettered": 1, "at": 1.0}
                ),
                "file:host-a-231": json.dumps(
                    {"delivered": 7, "retried": 2, "failed": 3, "dead_lettered": 0, "at": 2.0}
                ),
                "lunary:host-b-7": json.dumps({"delivered": 2, "at": 2.0}),
                "file:host-c-9": "not json",
            },
        )
    finally:
        await redis.aclose()
    async with running_proxy(
        tmp_path, upstream, LLM_PROXY_EVENT_BUS="redis-streams", REDIS_STREAM_KEY=stream
    ) as proxy:
        document = await proxy.metrics()
        lines = (await proxy.prometheus()).splitlines()
    file, lunary = document["dispatchers"]["file"], document["dispatchers"]["lunary"]
    assert (file["delivered"], file["retried"], file["failed"], file["dead_lettered"], file["reports"]) == (
        12,
        3,
        3,
        1,
        2,
    )
    assert (lunary["delivered"], lunary["reports"]) == (2, 1)
    assert file["lag"] is None  # no consumer group for it on this stream
    assert 'llm_proxy_dispatcher_delivered_total{service="file"} 12.0' in lines
    assert 'llm_proxy_dispatcher_retried_total{service="file"} 3.0' in lines
    assert 'llm_proxy_dispatcher_delivered_total{service="lunary"} 2.0' in lines
    assert not any(line.startswith("llm_proxy_dispatcher_lag{") for line in lines)


async def test_redis_down_reports_redis_up_zero_and_no_lag(tmp_path):
    settings = make_settings(
        tmp_path,
        LLM_PROXY_EVENT_BUS="redis-streams",
        REDIS_ADDR=f"127.0.0.1:{_free_port()}",
        DISPATCHER_SERVICES="file",
        FILE_EVENT_LOG=str(tmp_path / "events.jsonl"),
    )
    observability = Observability(
        ObservabilitySettings.of(settings), make_pipeline(PipelineSettings.of(settings))
    )
    try:
        await observability.refresh()
        snapshot = observability.snapshot()
        lines = observability.registry.exposition().decode().splitlines()
    finally:
        await observability.aclose()
    assert snapshot.redis_up is False
    assert snapshot.dispatchers["file"].lag is None
    assert "llm_proxy_redis_up 0.0" in lines
    assert not any(line.startswith("llm_proxy_dispatcher_lag{") for line in lines)


async def test_cache_counters_are_read_from_the_response_cache(tmp_path, upstream):
    cacheable = {"Cache-Control": "public, max-age=300"}
    async with running_proxy(tmp_path, upstream, HTTP_CACHE_ENABLED="true") as proxy:
        assert await proxy.chat(headers={**proxy.auth(), **cacheable}) == 200  # miss, stored
        assert await proxy.chat(headers={**proxy.auth(), **cacheable}) == 200  # hit
        assert await proxy.chat(headers={**proxy.auth(), "Cache-Control": "no-store"}) == 200  # bypass
        document = await proxy.metrics()
        lines = (await proxy.prometheus()).splitlines()
    assert document["cache"] == {"enabled": True, "hits": 1, "misses": 1, "bypass": 1, "stores": 1}
    assert document["requests"]["by_path"] == {CHAT: {"2xx": 3}}
    assert len(upstream.requests) == 2
    [ttfb] = document["upstream_ttfb_seconds"]
    assert ttfb["count"] == 2  # the hit never reached the upstream
    for line in (
        "llm_proxy_cache_hits_total 1.0",
        "llm_proxy_cache_misses_total 1.0",
        "llm_proxy_cache_bypass_total 1.0",
        "llm_proxy_cache_stores_total 1.0",
    ):
        assert line in lines


async def test_the_servers_event_loop_lag_is_sampled_and_exposed_in_both_renderings(tmp_path, upstream):
    async with running_proxy(tmp_path, upstream) as proxy:
        document = await poll(proxy.metrics, lambda d: (d["event_loop_lag"] or {}).get("count", 0) >= 1)
        text = await proxy.prometheus()
    lag = document["event_loop_lag"]
    assert lag["count"] >= 1 and lag["buckets"]["+Inf"] == lag["count"]
    assert 0.0 <= lag["last_seconds"] < 5.0
    assert "# TYPE llm_proxy_event_loop_lag_seconds histogram" in text
    assert "llm_proxy_event_loop_lag_seconds_count" in text
