"""Fixtures for the event buses: unique stream keys on the shared Redis, events, a private redis-server."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from llmproxy.config import Settings
from llmproxy.config_sections import BusSettings
from llmproxy.events.bus import Delivery, EventSource
from llmproxy.events.model import Event, Usage
from tests.settings import with_changes

SHARED_REDIS = "127.0.0.1:6379"


def _event(n: int) -> Event:
    return Event(
        id=uuid4().hex,
        request_id=f"req-{n}",
        project_id="p-1",
        token_id="t-1",
        method="POST",
        path="/v1/chat/completions",
        status=200,
        started_at="2025-01-01T00:00:00.000000Z",
        duration_ms=12.5 + n,
        stream=bool(n % 2),
        model="gpt-4o-mini",
        usage=Usage(prompt_tokens=n, completion_tokens=1, total_tokens=n + 1),
        request_body='{"model":"gpt-4o-mini"}',
        response_body=f"body {n} ✓",
    )


def stream_settings(addr: str = SHARED_REDIS, **streams: Any) -> BusSettings:
    """The events package's section for a stream key of its own on Redis at ``addr``."""
    stream = {"key": f"test:{uuid4().hex}:events", "consumer_name": "consumer-a", **streams}
    return BusSettings.of(with_changes(Settings(), redis={"addr": addr}, streams=stream))


async def _poll(
    check: Callable[[], Awaitable[bool]], deadline_s: float = 10.0, what: str = "condition"
) -> None:
    end = time.monotonic() + deadline_s
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _read_until(source: EventSource, count: int, deadline_s: float = 10.0) -> list[Delivery]:
    """Read until ``count`` deliveries arrived (or fail at the deadline)."""
    got: list[Delivery] = []
    end = time.monotonic() + deadline_s
    while len(got) < count:
        if time.monotonic() > end:
            raise AssertionError(f"read {len(got)} of {count} deliveries before the deadline")
        got.extend(await source.read(count - len(got), 0.1))
    return got


# Helpers are handed out as fixtures: test directories here are not packages, so no cross-module imports.
@pytest.fixture
def make_event() -> Callable[[int], Event]:
    """An event numbered ``n``: fields vary with ``n`` so decoding mix-ups show."""
    return _event


@pytest.fixture
def read_until() -> Callable[..., Awaitable[list[Delivery]]]:
    return _read_until


@pytest.fixture
def poll() -> Callable[..., Awaitable[None]]:
    return _poll


@pytest.fixture
def new_settings() -> Callable[..., BusSettings]:
    """Settings for a stream key of its own (caller deletes it; see ``settings`` for the shared Redis)."""
    return stream_settings


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=6379)
    yield client
    await client.aclose()


@pytest.fixture
async def settings(redis: Redis) -> AsyncIterator[BusSettings]:
    """The bus's settings with a stream key of its own; every key derived from it is deleted afterwards."""
    s = stream_settings()
    yield s
    key = s.streams.key
    await redis.delete(key, f"{key}:dead", f"{key}:list", f"{key}:list:dead")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A private, non-persistent redis-server on a fixed loopback port, killed and restarted at will."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        args += ["--daemonize", "no", "--dir", str(self.directory)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > end or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
