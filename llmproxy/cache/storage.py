"""Where cache entries live: a bounded in-process LRU, or Redis shared by every instance.

Both expire entries by TTL and purge by key prefix. Redis trouble never reaches a request: a failed
read is a miss, a write is dropped, and after a failure Redis is left alone for a moment so a dead
server costs one short timeout per ``retry_after`` rather than one per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from llmproxy.config import RedisSettings
from llmproxy.errors import ProxyError, Refusal
from llmproxy.redis_client import connect_redis

__all__ = ("Entry", "MemoryStorage", "RedisStorage", "Storage", "connect_cache_redis")

log = logging.getLogger(__name__)

_ENTRY_OVERHEAD = 256  # bytes charged per entry on top of its body and headers (the objects around them)
_SCAN_COUNT = 1000
_UNLINK_BATCH = 500
_MAX_PENDING_WRITES = 1000  # SETs in flight beyond this are dropped: a slow Redis must not pile up tasks
_WARN_EVERY = 30.0  # seconds between two warnings about an unreachable Redis


class Entry(msgspec.Struct, array_like=True):
    """One stored response, as replayed on a hit (headers already filtered, see keys.stored_headers)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stored_at: float  # time.time() when stored
    expires_at: float  # time.time() after which it is not served
    age: int  # Age the upstream gave it when stored
    vary: list[tuple[str, str | None]]  # the Vary fields and the values of the request that produced it
    etag: str | None
    encoding: str  # Content-Encoding of the body, "identity" when none


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Entry).decode


class Storage(Protocol):
    """What the HTTP cache needs from a storage backend; ``put`` never waits for I/O."""

    async def get(self, key: str) -> Entry | None: ...

    def available(self) -> bool:
        """False while the backend is known to be unreachable (what is stored now would be lost)."""
        ...

    def put(self, key: str, entry: Entry) -> None: ...

    async def purge(self, prefix: str) -> int: ...

    async def aclose(self) -> None: ...


def _entry_size(entry: Entry) -> int:
    return len(entry.body) + sum(len(n) + len(v) for n, v in entry.headers) + _ENTRY_OVERHEAD


class MemoryStorage:
    """An LRU bounded by entry count and total bytes; expired entries are dropped when met."""

    def __init__(self, *, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[Entry, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> Entry | None:
        found = self._entries.get(key)
        if found is None:
            return None
        entry = found[0]
        if entry.expires_at <= self._clock():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def available(self) -> bool:
        return True

    def put(self, key: str, entry: Entry) -> None:
        size = _entry_size(entry)
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._remove(key)
        entries = self._entries
        while entries and (len(entries) >= self.max_entries or self.bytes + size > self.max_bytes):
            _, (_, evicted) = entries.popitem(last=False)
            self.bytes -= evicted
        entries[key] = (entry, size)
        self.bytes += size

    async def purge(self, prefix: str) -> int:
        doomed = [key for key in self._entries if key.startswith(prefix)]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    async def aclose(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _remove(self, key: str) -> None:
        _, size = self._entries.pop(key)
        self.bytes -= size


def connect_cache_redis(settings: RedisSettings, *, timeout: float = 0.25) -> Redis:
    """A Redis client for the cache: short timeouts and no retries, since a miss beats a slow answer."""
    return connect_redis(settings, socket_timeout=timeout, connect_timeout=timeout, retries=0)


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisStorage:
    """Entries as msgpack under their key with ``SET … PX ttl``; writes run on owned tasks."""

    def __init__(
        self,
        redis: Redis,
        *,
        owns_redis: bool = True,
        retry_after: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._owns_redis = owns_redis
        self._retry_after = retry_after
        self._clock = clock
        self._down_until = 0.0
        self._warned_at = -_WARN_EVERY
        self._writes: set[asyncio.Task[None]] = set()
        self.dropped_writes = 0

    async def get(self, key: str) -> Entry | None:
        if self._resting():
            return None
        try:
            raw = await self._redis.get(key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return None
        if not isinstance(raw, bytes):
            return None
        try:
            entry = _decode(raw)
        except msgspec.DecodeError:
            return None  # written by something else (or an older layout): a miss, overwritten on store
        return entry if entry.expires_at > self._clock() else None

    def available(self) -> bool:
        return not self._resting()

    def put(self, key: str, entry: Entry) -> None:
        ttl_ms = int((entry.expires_at - self._clock()) * 1000)
        if ttl_ms <= 0 or self._resting():
            return
        if len(self._writes) >= _MAX_PENDING_WRITES:
            self.dropped_writes += 1
            return
        task = asyncio.get_running_loop().create_task(self._set(key, _encode(entry), ttl_ms))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _set(self, key: str, value: bytes, ttl_ms: int) -> None:
        try:
            await self._redis.set(key, value, px=ttl_ms)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)

    async def purge(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``: SCAN MATCH, UNLINK in batches."""
        deleted = 0
        batch: list[bytes] = []
        try:
            async for key in self._redis.scan_iter(match=_glob_escape(prefix) + "*", count=_SCAN_COUNT):
                batch.append(key)
                if len(batch) >= _UNLINK_BATCH:
                    deleted += await self._redis.unlink(*batch)
                    batch.clear()
            if batch:
                deleted += await self._redis.unlink(*batch)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("response cache purge failed: Redis unreachable (%s)", type(exc).__name__)
            raise ProxyError(Refusal.SERVICE_UNAVAILABLE, "The response cache store is unreachable") from None
        return deleted

    async def aclose(self) -> None:
        """Let writes in flight finish (each is bounded by the socket timeout), then close."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self._owns_redis:
            await self._redis.aclose()

    def _resting(self) -> bool:
        return self._down_until > 0.0 and time.monotonic() < self._down_until

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._down_until = now + self._retry_after
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            log.warning(
                "response cache: Redis unreachable (%s: %s); serving misses for now",
                type(exc).__name__,
                exc,
            )
