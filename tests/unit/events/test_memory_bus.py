"""The in-process bus: fan-out to every subscriber, bounded per subscriber, drops counted."""

from __future__ import annotations

import asyncio
from uuid import uuid4

from llmproxy.events.memory import InMemoryBus
from llmproxy.events.model import Event


def event(n: int) -> Event:
    return Event(
        id=uuid4().hex,
        request_id=f"req-{n}",
        project_id="p",
        token_id="t",
        method="POST",
        path="/v1/chat/completions",
        status=200,
        started_at="2025-01-01T00:00:00.000000Z",
        duration_ms=float(n),
    )


async def test_every_subscriber_gets_every_event() -> None:
    bus = InMemoryBus(100)
    file_source, lunary_source = bus.subscribe("file"), bus.subscribe("lunary")
    events = [event(n) for n in range(5)]
    for e in events:
        bus.publish(e)

    assert [d.event for d in await file_source.read(10, 0)] == events
    assert [d.event for d in await lunary_source.read(10, 0)] == events


async def test_a_slow_subscriber_loses_its_oldest_events_without_affecting_the_others() -> None:
    bus = InMemoryBus(3)
    slow, fast = bus.subscribe("slow"), bus.subscribe("fast")
    events = [event(n) for n in range(5)]
    for e in events[:3]:
        bus.publish(e)
    assert len(await fast.read(10, 0)) == 3
    for e in events[3:]:
        bus.publish(e)

    assert [d.event for d in await slow.read(10, 0)] == events[2:]
    assert [d.event for d in await fast.read(10, 0)] == events[3:]
    assert (await slow.lag())["dropped"] == 2
    assert bus.stats()["dropped"] == 2
    assert bus.stats()["published"] == 5


async def test_read_returns_at_most_max_count_with_fresh_delivery_counts() -> None:
    bus = InMemoryBus(100)
    source = bus.subscribe("file")
    for n in range(5):
        bus.publish(event(n))

    batch = await source.read(2, 0)

    assert [d.deliveries for d in batch] == [1, 1]
    assert len({d.entry_id for d in batch + await source.read(10, 0)}) == 5


async def test_a_waiting_reader_wakes_up_when_an_event_is_published() -> None:
    bus = InMemoryBus(100)
    source = bus.subscribe("file")
    reading = asyncio.ensure_future(source.read(10, 5.0))
    await asyncio.sleep(0)
    published = event(1)

    bus.publish(published)

    assert [d.event for d in await asyncio.wait_for(reading, 5.0)] == [published]


async def test_read_gives_up_after_block_time_when_nothing_comes() -> None:
    source = InMemoryBus(100).subscribe("file")

    assert await source.read(10, 0.01) == []


async def test_a_closed_subscriber_receives_nothing_more() -> None:
    bus = InMemoryBus(100)
    source = bus.subscribe("file")
    await source.aclose()

    bus.publish(event(1))

    assert await source.read(10, 0) == []
    assert bus.stats()["queued"] == 0


async def test_lag_is_what_waits_in_the_queue() -> None:
    bus = InMemoryBus(100)
    source = bus.subscribe("file")
    for n in range(4):
        bus.publish(event(n))
    await source.read(1, 0)

    assert await source.lag() == {"length": 3, "pending": 0, "dropped": 0}
