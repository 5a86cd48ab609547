"""Redis list bus (``LLM_PROXY_EVENT_BUS=redis``): LPUSH/BRPOP, at-most-once.

An event popped by a reader is gone from Redis: if the reader dies before its backend accepted it, it
is lost (use redis-streams for at-least-once). The list is one work queue: every event goes to exactly
one reader, whatever its service, so run a single dispatcher service with it (streams fan out).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmproxy.events.bus import BusUnavailable, Delivery
from llmproxy.events.model import Event, encode_event
from llmproxy.events.spill import Drain, RedisProducer, SpillBuffer
from llmproxy.redis_keys import dead_list_key, list_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from llmproxy.config_sections import BusSettings

__all__ = ("ListSource", "RedisListBus")

log = logging.getLogger(__name__)

SPILL_MAX_BYTES = 64 * 1024 * 1024
SPILL_MIN_ITEMS = 10_000


class RedisListBus(RedisProducer[bytes]):
    """Producer: ``publish`` buffers locally; a drain task LPUSHes many events per command (LTRIM-bounded)."""

    def __init__(
        self,
        redis: Redis,
        settings: BusSettings,
        *,
        owns_redis: bool = False,
        spill_max_items: int | None = None,
        spill_max_bytes: int = SPILL_MAX_BYTES,
        flush_timeout_s: float = 5.0,
    ) -> None:
        self._key = list_key(settings.streams.key)
        self._max_len = settings.streams.max_len
        max_items = spill_max_items or max(settings.buffer_size, SPILL_MIN_ITEMS)
        address = settings.redis.addr
        drain = Drain(
            SpillBuffer[bytes](max_items, spill_max_bytes, len),
            self._write,
            address=address,
            flush_timeout_s=flush_timeout_s,
        )
        super().__init__(redis, address, drain, owns_redis=owns_redis)

    def _entry(self, event: Event) -> bytes:
        return encode_event(event)

    async def _write(self, batch: list[bytes]) -> list[bytes]:
        # LPUSH k a b c leaves c leftmost; BRPOP takes from the right, so readers see a, b, c in order.
        pipe = self._redis.pipeline(transaction=False)
        pipe.lpush(self._key, *batch)
        if self._max_len:
            pipe.ltrim(self._key, 0, self._max_len - 1)  # keep the newest
        pushed, *_ = await pipe.execute(raise_on_error=False)
        return batch if isinstance(pushed, Exception) else []


class ListSource:
    """Reader: BRPOP for the first event, RPOP for the rest of a batch. ``ack`` is a no-op (at-most-once)."""

    redelivers = False

    def __init__(
        self,
        redis: Redis,
        settings: BusSettings,
        service: str,
        *,
        owns_redis: bool = False,
        counters: str | None = None,
    ) -> None:
        self.service = service
        self._counters = counters  # redis_streams.totals_key(), or None: not counted
        self._redis = redis
        self._owns_redis = owns_redis
        self._key = list_key(settings.streams.key)
        self._dead_key = dead_list_key(settings.streams.key)
        self._max_len = settings.streams.max_len
        self._address = settings.redis.addr
        socket_timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
        self._max_block_s = max(0.001, socket_timeout - 1.0) if socket_timeout else float("inf")
        self._sequence = 0

    @contextmanager
    def _reaching_redis(self) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise BusUnavailable(f"Redis at {self._address} unreachable: {exc}") from exc

    async def start(self) -> None:
        with self._reaching_redis():
            await self._redis.ping()

    async def read(self, max_count: int, block_s: float) -> list[Delivery]:
        block_s = min(block_s, self._max_block_s)
        with self._reaching_redis():
            if block_s > 0:
                popped = await self._redis.brpop([self._key], timeout=block_s)
                first = _values(popped[1] if popped else None)
            else:
                first = _values(await self._redis.rpop(self._key))
            if not first:
                return []
            rest = _values(await self._redis.rpop(self._key, max_count - 1)) if max_count > 1 else []
        return [self._delivery(raw) for raw in first + rest]

    async def ack(self, entry_ids: list[str]) -> None:
        """Nothing to acknowledge (popped is gone); counted as delivered in ``counters``."""
        if self._counters is not None and entry_ids:
            with self._reaching_redis():
                await self._redis.hincrby(self._counters, f"{self.service}:delivered", len(entry_ids))

    async def dead_letter(self, deliveries: list[Delivery], error: str) -> None:
        """LPUSH a record per entry to ``<key>:list:dead`` (error, service, payload), bounded like the list."""
        if not deliveries:
            return
        records = [
            msgspec.json.encode(
                {
                    "error": error,
                    "service": self.service,
                    "original_id": d.entry_id,
                    "deliveries": d.deliveries,
                    "event": d.raw.decode(errors="replace"),
                }
            )
            for d in deliveries
        ]
        pipe = self._redis.pipeline(transaction=False)
        pipe.lpush(self._dead_key, *records)
        if self._counters is not None:
            pipe.hincrby(self._counters, f"{self.service}:dead_lettered", len(deliveries))
        if self._max_len:
            pipe.ltrim(self._dead_key, 0, self._max_len - 1)
        with self._reaching_redis():
            await pipe.execute()
        log.warning("%d events moved to %s: %s", len(deliveries), self._dead_key, error)

    async def lag(self) -> dict[str, int]:
        with self._reaching_redis():
            return {"length": await self._redis.llen(self._key), "pending": 0}

    async def aclose(self) -> None:
        if self._owns_redis:
            await self._redis.aclose()

    def _delivery(self, raw: bytes) -> Delivery:
        self._sequence += 1
        return Delivery(f"{self.service}-{self._sequence}", None, raw, 1)


def _values(reply: object) -> list[bytes]:
    """The values a pop's reply carries: none, one, or (popped with a count) a list. Bytes, as our
    connections don't decode replies; redis-py types every decoding and reply form as one union."""
    if reply is None:
        return []
    return cast("list[bytes]", reply if isinstance(reply, list) else [reply])
