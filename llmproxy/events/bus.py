"""The two sides of the event bus: what the proxy publishes to and what a dispatcher reads from.

Producers and consumers code against ``EventBus`` / ``EventSource``; ``make_bus`` and ``make_source`` are
the one place in ``events`` that picks the concrete class for ``LLM_PROXY_EVENT_BUS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import msgspec
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from llmproxy.events.model import Event

if TYPE_CHECKING:
    from llmproxy.config import RedisSettings, Settings

__all__ = (
    "BusUnavailable",
    "Delivery",
    "EventBus",
    "EventSource",
    "RedisFactory",
    "connect_redis",
    "make_bus",
    "make_source",
)


class BusUnavailable(Exception):
    """The bus backend (Redis) cannot be reached. Raised by ``EventSource`` methods and ``EventBus.start``.

    A dispatcher backs off (e.g. 0.1s doubling to 2s) and calls again; the source reconnects by itself.
    """


class Delivery(msgspec.Struct):
    """One entry handed to a dispatcher: ``raw``, the payload as stored in Redis, or (in-memory bus, ``raw``
    empty) the ``event`` itself, with its ``event_id``.

    Sources do not decode: the dispatcher decodes ``raw`` into ``event``, or for a backend that writes the
    stored bytes only checks it, and sets ``event_id`` ("" until then, and for an entry that is not an
    event). ``deliveries`` counts how often the entry was handed out (1 = first time).
    """

    entry_id: str
    event: Event | None
    raw: bytes
    deliveries: int
    event_id: str = ""


class EventBus(Protocol):
    """Producer side, used on the request path."""

    def publish(self, event: Event) -> None:
        """Queue ``event``; synchronous, never blocks, never raises, never awaits Redis."""

    async def start(self) -> None:
        """Start background delivery; raises ``BusUnavailable`` naming the address if Redis is unreachable."""

    async def aclose(self) -> None:
        """Flush what is buffered (bounded by a timeout), then stop; what is left is counted as dropped."""

    def stats(self) -> dict[str, int]:
        """Counters: published, written (into the bus), dropped, spilled (held while Redis was down),
        pending (held by the producer now), outages, unavailable (1 while Redis is unreachable)."""


class EventSource(Protocol):
    """Consumer side: one per dispatcher service (and, for Redis Streams, per worker).

    ``redelivers``: an entry read but never acked is handed out again later (Redis Streams). The list
    and in-memory sources remove what they hand out: whatever was read must be sent.
    """

    redelivers: bool

    async def start(self) -> None:
        """Prepare reading (create the consumer group); raises ``BusUnavailable``."""

    async def read(self, max_count: int, block_s: float) -> list[Delivery]:
        """Up to ``max_count`` deliveries, waiting at most ``block_s`` for the first; [] when none came."""

    async def ack(self, entry_ids: list[str]) -> None:
        """The backend accepted these entries: never hand them out again."""

    async def dead_letter(self, deliveries: list[Delivery], error: str) -> None:
        """Give up on these entries: keep them aside with ``error`` and stop redelivering them."""

    async def lag(self) -> dict[str, int]:
        """Backlog: at least ``length`` (waiting in the bus) and ``pending`` (handed out, not acked)."""

    async def aclose(self) -> None: ...


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


def make_bus(settings: Settings, redis_factory: RedisFactory = connect_redis) -> EventBus:
    """The producer for ``settings.events.bus``; a Redis bus owns (and closes) the client it creates."""
    kind = settings.events.bus
    if kind == "in-memory":
        from llmproxy.events.memory import InMemoryBus

        return InMemoryBus(settings.events.buffer_size, settings.events.dead_letter_file or "")
    redis = redis_factory(settings.redis, socket_timeout=5.0)
    if kind == "redis":
        from llmproxy.events.redis_list import RedisListBus

        return RedisListBus(redis, settings, owns_redis=True)
    if kind == "redis-streams":
        from llmproxy.events.redis_streams import RedisStreamBus

        return RedisStreamBus(redis, settings, owns_redis=True)
    raise ValueError(f"unknown event bus: {kind!r}")


def make_source(
    settings: Settings,
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
    kind = settings.events.bus
    if kind == "in-memory":
        from llmproxy.events.memory import InMemoryBus

        if not isinstance(bus, InMemoryBus):
            raise ValueError("the in-memory bus is read in-process: pass the server's InMemoryBus as bus=")
        return bus.subscribe(service)
    # the socket must outlive the longest blocking read
    redis = redis_factory(settings.redis, socket_timeout=settings.streams.block_time + 5.0)
    from llmproxy.redis_keys import totals_key

    counters = totals_key(settings.streams.key)
    if kind == "redis":
        from llmproxy.events.redis_list import ListSource

        return ListSource(redis, settings, service, owns_redis=True, counters=counters)
    if kind == "redis-streams":
        from llmproxy.events.redis_streams import StreamSource
        from llmproxy.redis_keys import group_name

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
