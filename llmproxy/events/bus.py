"""The two sides of the event bus: what the proxy publishes to and what a dispatcher reads from.

Producers and consumers code against ``EventBus`` / ``EventSource``; ``events.factory`` picks the
concrete class for ``LLM_PROXY_EVENT_BUS`` (the implementations import this module, never the reverse).
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from llmproxy.events.model import Event

__all__ = ("BusUnavailable", "Delivery", "EventBus", "EventSource")


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
