"""The one place in ``events`` that picks the concrete bus for ``LLM_PROXY_EVENT_BUS``: the producer the
proxy publishes to and the source a dispatcher reads from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmproxy.events.bus import EventBus, EventSource
from llmproxy.events.memory import InMemoryBus
from llmproxy.events.redis_list import ListSource, RedisListBus
from llmproxy.events.redis_streams import RedisStreamBus, StreamSource
from llmproxy.redis_client import RedisFactory, connect_redis
from llmproxy.redis_keys import group_name, totals_key

if TYPE_CHECKING:
    from llmproxy.config_sections import BusSettings

__all__ = ("make_bus", "make_source")


def make_bus(settings: BusSettings, redis_factory: RedisFactory = connect_redis) -> EventBus:
    """The producer for ``settings.kind``; a Redis bus owns (and closes) the client it creates."""
    kind = settings.kind
    if kind == "in-memory":
        return InMemoryBus(settings.buffer_size, settings.dead_letter_file)
    redis = redis_factory(settings.redis, socket_timeout=5.0)
    if kind == "redis":
        return RedisListBus(redis, settings, owns_redis=True)
    if kind == "redis-streams":
        return RedisStreamBus(redis, settings, owns_redis=True)
    raise ValueError(f"unknown event bus: {kind!r}")


def make_source(
    settings: BusSettings,
    service: str,
    *,
    bus: EventBus | None = None,
    group: str | None = None,
    consumer: str | None = None,
    redis_factory: RedisFactory = connect_redis,
) -> EventSource:
    """The reader for one dispatcher ``service``.

    in-memory: subscribes to ``bus`` (required, the server's own ``InMemoryBus``). redis-streams: joins
    ``group`` (default ``<REDIS_CONSUMER_GROUP>-<service>``) as ``consumer`` (default REDIS_CONSUMER_NAME;
    a worker process must pass a name unique among the group's live consumers).
    """
    kind = settings.kind
    if kind == "in-memory":
        if not isinstance(bus, InMemoryBus):
            raise ValueError("the in-memory bus is read in-process: pass the server's InMemoryBus as bus=")
        return bus.subscribe(service)
    # the socket must outlive the longest blocking read
    redis = redis_factory(settings.redis, socket_timeout=settings.streams.block_time + 5.0)
    counters = totals_key(settings.streams.key)
    if kind == "redis":
        return ListSource(redis, settings, service, owns_redis=True, counters=counters)
    if kind == "redis-streams":
        return StreamSource(
            redis,
            settings,
            service,
            group=group or group_name(settings.streams.consumer_group, service),
            consumer=consumer or settings.streams.consumer_name or f"{service}-consumer",
            owns_redis=True,
            counters=counters,
        )
    raise ValueError(f"unknown event bus: {kind!r}")
