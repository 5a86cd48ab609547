"""Dispatcher counters across worker deaths: /metrics adds up to what was written, the stats hash keeps
one field per live worker."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.e2e.conftest import poll
from tests.e2e.test_event_pipeline import _send, _token, streams_env, worker_pids
from tests.fakes.upstream import FakeUpstream

N = 200


@pytest.fixture
async def stream_key():
    key = f"test-e2e-stats-{uuid.uuid4().hex}"
    yield key
    r = aioredis.Redis(host="127.0.0.1", port=6379)
    keys = [k async for k in r.scan_iter(match=f"{key}*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()


async def _delivered(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as r:
        document = await r.json()
    return int(document["dispatchers"].get("file", {}).get("delivered", 0))


async def test_a_killed_workers_deliveries_still_count_and_its_stats_field_is_folded(make_server, stream_key):
    redis = aioredis.Redis(host="127.0.0.1", port=6379, decode_responses=True)
    stats = f"{stream_key}:dispatcher-stats"
    host = socket.gethostname()
    try:
        async with FakeUpstream() as upstream:
            server = await make_server(**streams_env(upstream, stream_key, DISPATCHER_WORKERS="1"))
            assert await poll(lambda: len(worker_pids(server.process.pid)) == 1)
            [victim] = worker_pids(server.process.pid)
            token = await _token(server)
            assert await _send(server, token, N) == {200: N}
            assert await poll(lambda: len(server.events()) >= N, timeout=30), server.log()
            os.kill(victim, signal.SIGKILL)  # within its 2 s report interval after the last ack

            assert await poll(lambda: [p for p in worker_pids(server.process.pid) if p != victim])
            [replacement] = worker_pids(server.process.pid)
            fields: list[str] = []
            for _ in range(100):  # the replacement folds the dead worker's field when it starts
                fields = sorted(await redis.hkeys(stats))
                if fields == [f"file:{host}-{replacement}"]:
                    break
                await asyncio.sleep(0.1)
            assert fields == [f"file:{host}-{replacement}"]

            delivered = 0
            for _ in range(50):
                delivered = await _delivered(server.url)
                if delivered == N:
                    break
                await asyncio.sleep(0.1)
            assert delivered == N == len(server.events())
            assert await server.stop() == 0
        assert await redis.hkeys(stats) == []  # a worker that stops folds its own field
        assert await redis.hget(f"{stream_key}:dispatcher-totals", "file:delivered") == str(N)
    finally:
        await redis.aclose()
