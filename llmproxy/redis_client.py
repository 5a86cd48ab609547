"""The Redis connection factory every Redis user shares: cache, auth, events, dispatch and server.

A client that fails fast; callers own it and close it. Key names are llmproxy.redis_keys'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

if TYPE_CHECKING:
    from llmproxy.config import RedisSettings

__all__ = ("RedisFactory", "connect_redis")


class RedisFactory(Protocol):
    def __call__(self, settings: RedisSettings, *, socket_timeout: float) -> Redis: ...


def connect_redis(
    settings: RedisSettings,
    *,
    socket_timeout: float = 5.0,
    connect_timeout: float | None = None,
    retries: int = 1,
) -> Redis:
    """A Redis client that fails fast: ``retries`` immediate retries (1: a stale pooled connection), no
    backoff of its own; connecting times out after ``connect_timeout`` (default: socket timeout, ≤ 2 s).

    The bus does its own bounded backoff; redis-py's default (10 retries with backoff) would stall shutdown.
    """
    host, _, port = settings.addr.rpartition(":")
    if not host or not port.isdigit():
        host, port = settings.addr or "localhost", "6379"
    return Redis(
        host=host.strip("[]"),
        port=int(port),
        db=settings.db,
        password=settings.password or None,
        socket_timeout=socket_timeout,
        socket_connect_timeout=min(socket_timeout, 2.0) if connect_timeout is None else connect_timeout,
        retry=Retry(NoBackoff(), retries),
    )
