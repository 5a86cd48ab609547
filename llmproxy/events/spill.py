"""Events held locally until Redis takes them: a bounded spill buffer and the task that drains it.

The request path only appends to the buffer; the drain writes many entries per round trip, backs off
while Redis is unreachable and replays what was held, oldest first, once it is back. Nothing is lost
silently: when the buffer is full the oldest entries are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

from redis.exceptions import RedisError

from llmproxy.events.bus import BusUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from llmproxy.events.model import Event

__all__ = ("Drain", "RedisProducer", "SpillBuffer", "WriteBatch")

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0
# After writing fewer than LINGER_BELOW entries the drain pauses LINGER_S, so a trickle of requests
# (c=1) shares one round trip per few ms instead of paying one (and a worker read) per event: about a
# quarter less CPU per request, server and worker together, at c=1 (docs/performance.md). Events reach
# Redis at most 5 ms later; a drain that is closing writes at once.
LINGER_S = 0.005
LINGER_BELOW = 64

# Writes ``batch``; returns the entries Redis refused (to be retried) and raises when it is unreachable.
WriteBatch = Callable[[list[T]], Awaitable[list[T]]]


class SpillBuffer(Generic[T]):
    """Bounded FIFO of entries waiting for Redis, limited in count and bytes; full → the oldest go, counted.

    It also remembers whether Redis is down, so an outage is logged once (with the address), not per event.
    """

    def __init__(self, max_items: int, max_bytes: int, size: Callable[[T], int]) -> None:
        self.max_items = max(1, max_items)
        self.max_bytes = max(1, max_bytes)
        self._size = size
        self._items: deque[T] = deque()
        self.bytes = 0
        self.dropped = 0  # entries pushed out because the buffer was full
        self.spilled = 0  # entries that had to wait because Redis was unreachable
        self.outages = 0
        self._down_since: float | None = None
        self._at_outage = (0, 0)  # (spilled, dropped) when the current outage began
        self._drop_logged = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def append(self, item: T) -> None:
        self._items.append(item)
        self.bytes += self._size(item)
        if self.down:
            self.spilled += 1
        self._trim()

    def take(self, max_items: int, max_bytes: int) -> list[T]:
        """Remove and return the oldest entries: up to ``max_items`` and ``max_bytes`` (at least one)."""
        batch: list[T] = []
        taken = 0
        while self._items and len(batch) < max_items:
            size = self._size(self._items[0])
            if batch and taken + size > max_bytes:
                break
            batch.append(self._items.popleft())
            taken += size
        self.bytes -= taken
        if not self._items:
            self._drop_logged = False
        return batch

    def clear(self) -> int:
        """Forget every held entry; returns how many there were."""
        count = len(self._items)
        self._items.clear()
        self.bytes = 0
        return count

    def restore(self, items: Iterable[T]) -> None:
        """Put entries that could not be written back in front, in their order (a full buffer drops them)."""
        items = list(items)
        self._items.extendleft(reversed(items))
        self.bytes += sum(self._size(item) for item in items)
        self._trim()

    def outage(self, address: str, error: object) -> None:
        """Redis could not take a write. Logs only the first failure of an outage."""
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        self._at_outage = (self.spilled, self.dropped)
        self.outages += 1
        self.spilled += len(self._items)
        log.warning(
            "Redis at %s unreachable (%s): holding events locally (up to %d) until it is back",
            address,
            error,
            self.max_items,
        )

    def recovered(self, address: str) -> None:
        if self._down_since is None:
            return
        down_s = time.monotonic() - self._down_since
        self._down_since = None
        log.warning(
            "Redis at %s reachable again after %.1fs: replaying held events (%d held, %d dropped in this outage)",
            address,
            down_s,
            self.spilled - self._at_outage[0],
            self.dropped - self._at_outage[1],
        )

    def _trim(self) -> None:
        while len(self._items) > 1 and (len(self._items) > self.max_items or self.bytes > self.max_bytes):
            self.bytes -= self._size(self._items.popleft())
            self.dropped += 1
            if not self._drop_logged:
                self._drop_logged = True
                log.warning(
                    "event buffer full (%d entries, %d bytes): dropping the oldest events",
                    self.max_items,
                    self.max_bytes,
                )


class Drain(Generic[T]):
    """Owns the task that moves a ``SpillBuffer`` into Redis through ``write``; ``aclose`` flushes it."""

    def __init__(
        self,
        buffer: SpillBuffer[T],
        write: WriteBatch[T],
        *,
        address: str,
        batch_items: int = 500,
        batch_bytes: int = 4 * 1024 * 1024,
        flush_timeout_s: float = 5.0,
        linger_s: float = LINGER_S,
    ) -> None:
        self.buffer = buffer
        self._write = write
        self._address = address
        self._batch_items = batch_items
        self._batch_bytes = batch_bytes
        self._flush_timeout_s = flush_timeout_s
        self._linger_s = linger_s
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing is held or being written
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._pause: asyncio.Future[None] | None = None  # set while lingering after a small write
        self._closed = False
        self.published = 0
        self.written = 0

    def put(self, item: T) -> None:
        """Queue ``item`` for writing; never blocks or raises (after ``aclose`` it is counted as dropped)."""
        self.published += 1
        if self._closed:
            self.buffer.dropped += 1
            return
        self.buffer.append(item)
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"event-drain {self._address}"
            )

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything put so far is written (needs ``start``); False if ``timeout_s`` ran out."""
        try:
            await asyncio.wait_for(
                self._idle.wait(), self._flush_timeout_s if timeout_s is None else timeout_s
            )
        except TimeoutError:
            return False
        return True

    async def aclose(self, timeout_s: float | None = None) -> None:
        """Write what is held for up to ``timeout_s``; whatever is still held then is counted as dropped."""
        self._closed = True
        self._wake.set()
        if self._pause is not None:
            _settle(self._pause)
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait(
                {task}, timeout=self._flush_timeout_s if timeout_s is None else timeout_s
            )
            if not done:
                task.cancel()
            [outcome] = await asyncio.gather(task, return_exceptions=True)
            if isinstance(outcome, Exception):
                log.error("event drain for Redis at %s failed", self._address, exc_info=outcome)
        lost = self.buffer.clear()
        if lost:
            self.buffer.dropped += lost
            log.warning("event bus closed with %d events not written to Redis at %s", lost, self._address)

    def stats(self) -> dict[str, int]:
        return {
            "published": self.published,
            "written": self.written,
            "dropped": self.buffer.dropped,
            "spilled": self.buffer.spilled,
            "pending": len(self.buffer),
            "outages": self.buffer.outages,
            "unavailable": int(self.buffer.down),
        }

    async def _run(self) -> None:
        backoff = MIN_BACKOFF_S
        while True:
            batch = self.buffer.take(self._batch_items, self._batch_bytes)
            if not batch:
                self._idle.set()
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            error: object = None
            try:
                refused = await self._write(batch)
            except asyncio.CancelledError:
                self.buffer.restore(batch)
                raise
            except Exception as exc:  # connection refused/reset, timeout, OOM…: all mean "hold and retry"
                refused, error = batch, exc
            self.written += len(batch) - len(refused)
            if not refused:
                self.buffer.recovered(self._address)
                backoff = MIN_BACKOFF_S
                if len(batch) < LINGER_BELOW and self._linger_s > 0 and not self._closed:
                    await self._linger()
                continue
            self.buffer.restore(refused)
            self.buffer.outage(self._address, error or f"{len(refused)} of {len(batch)} entries refused")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _linger(self) -> None:
        """Pause after a small write (already counted), so the next one gathers what arrives meanwhile;
        ``aclose`` ends the pause."""
        loop = asyncio.get_running_loop()
        self._pause = pause = loop.create_future()
        timer = loop.call_later(self._linger_s, _settle, pause)
        try:
            await pause
        finally:
            timer.cancel()
            self._pause = None


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class RedisProducer(Generic[T]):
    """What the two Redis buses share: ``publish`` puts the event's entry in a ``Drain``; Redis is
    pinged at start; flush, close and stats are the drain's. Subclasses say what an entry is."""

    def __init__(self, redis: Redis, address: str, drain: Drain[T], *, owns_redis: bool) -> None:
        self._redis = redis
        self._address = address
        self._drain = drain
        self._owns_redis = owns_redis

    def _entry(self, event: Event) -> T:
        raise NotImplementedError

    def publish(self, event: Event) -> None:
        try:
            self._drain.put(self._entry(event))
        except Exception:  # never let observability break a request
            log.exception("could not queue event %s", getattr(event, "id", "?"))

    async def start(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"Redis at {self._address} unreachable: {exc}") from exc
        self._drain.start()

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until what was published so far is in Redis; False if it could not be written in time."""
        return await self._drain.flush(timeout_s)

    async def aclose(self, timeout_s: float | None = None) -> None:
        await self._drain.aclose(timeout_s)
        if self._owns_redis:
            await self._redis.aclose()

    def stats(self) -> dict[str, int]:
        return self._drain.stats()
