"""In-process bus: every subscriber (one per dispatcher service) gets each event in its own bounded queue.

Nothing survives a restart and a slow subscriber loses its oldest events (counted) rather than slowing
the request path or the other subscribers. Events a backend refused for good go to the dead-letter file.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from llmproxy.events.bus import Delivery
from llmproxy.events.dead_letters import DeadLetterFile, new_letter
from llmproxy.events.model import Event, encode_event

__all__ = ("InMemoryBus", "MemorySource")

log = logging.getLogger(__name__)


class MemorySource:
    """One subscriber's queue. ``ack`` is a no-op: an event read is an event gone."""

    redelivers = False

    def __init__(
        self, bus: InMemoryBus, name: str, buffer_size: int, dead_letters: DeadLetterFile | None = None
    ) -> None:
        self.name = name
        self._bus = bus
        self._dead_letters = dead_letters
        self._queue: deque[Event] = deque()
        self._max = max(1, buffer_size)
        self._ready = asyncio.Event()
        self._sequence = 0
        self.dropped = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def offer(self, event: Event) -> None:
        if len(self._queue) >= self._max:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "in-memory bus: subscriber %s is behind, %d events dropped", self.name, self.dropped
                )
        self._queue.append(event)
        self._ready.set()

    async def start(self) -> None:
        return None

    async def read(self, max_count: int, block_s: float) -> list[Delivery]:
        if not self._queue and block_s > 0:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), block_s)
            except TimeoutError:
                return []
        batch: list[Delivery] = []
        while self._queue and len(batch) < max_count:
            self._sequence += 1
            event = self._queue.popleft()
            batch.append(Delivery(str(self._sequence), event, b"", 1, event.id))
        return batch

    async def ack(self, entry_ids: list[str]) -> None:
        return None

    async def dead_letter(self, deliveries: list[Delivery], error: str) -> None:
        """Append them to DEAD_LETTER_FILE (in a thread); without one (``off``) or when it cannot be
        written, their ids are only logged."""
        ids = [d.event_id for d in deliveries]
        if self._dead_letters is not None:
            letters = [
                new_letter(
                    encode_event(d.event) if d.event is not None else d.raw,
                    self.name,
                    error,
                    deliveries=d.deliveries,
                    original_id=d.event_id,
                )
                for d in deliveries
            ]
            try:
                await self._dead_letters.add(letters)
            except OSError as exc:
                log.error("in-memory bus: cannot write dead letters to %s: %s", self._dead_letters.path, exc)
            else:
                log.warning("in-memory bus: %s gave up on %d events (%s): kept in %s",
                            self.name, len(deliveries), error, self._dead_letters.path)  # fmt: skip
                return
        log.warning("in-memory bus: %s gave up on %d events (%s): %s", self.name, len(deliveries), error, ids)

    async def lag(self) -> dict[str, int]:
        return {"length": len(self._queue), "pending": 0, "dropped": self.dropped}

    async def aclose(self) -> None:
        self._bus.unsubscribe(self)


class InMemoryBus:
    """Fan-out to the subscribers registered with ``subscribe``; with none, events are counted and gone."""

    def __init__(self, buffer_size: int = 1000, dead_letter_file: str = "") -> None:
        self._buffer_size = buffer_size
        self._dead_letters = DeadLetterFile(dead_letter_file) if dead_letter_file else None
        self._subscribers: list[MemorySource] = []
        self._published = 0
        self._unsubscribed_dropped = 0

    def subscribe(self, name: str) -> MemorySource:
        source = MemorySource(self, name, self._buffer_size, self._dead_letters)
        self._subscribers.append(source)
        return source

    def unsubscribe(self, source: MemorySource) -> None:
        if source in self._subscribers:
            self._subscribers.remove(source)
            self._unsubscribed_dropped += source.dropped

    def queued_by_subscriber(self) -> dict[str, int]:
        """Events waiting in each subscriber's queue, by name (a dispatcher service's lag)."""
        queued: dict[str, int] = {}
        for source in self._subscribers:
            queued[source.name] = queued.get(source.name, 0) + source.queued
        return queued

    def publish(self, event: Event) -> None:
        self._published += 1
        for source in self._subscribers:
            source.offer(event)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None  # subscribers drain their queues until their own aclose

    def stats(self) -> dict[str, int]:
        return {
            "published": self._published,
            "written": self._published,
            "dropped": self._unsubscribed_dropped + sum(s.dropped for s in self._subscribers),
            "spilled": 0,
            "pending": 0,  # nothing waits in the producer: publish hands events straight to the queues
            "queued": sum(s.queued for s in self._subscribers),
            "outages": 0,
            "unavailable": 0,
        }
