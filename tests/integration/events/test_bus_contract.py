"""One contract, every bus: what is published is read back once, decoded equal; a full buffer drops, counted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from llmproxy.config_sections import BusSettings
from llmproxy.events.bus import Delivery, EventBus, EventSource
from llmproxy.events.factory import make_bus, make_source
from llmproxy.events.memory import InMemoryBus
from llmproxy.events.model import Event, decode_event
from llmproxy.events.redis_list import ListSource, RedisListBus
from llmproxy.events.redis_streams import RedisStreamBus, StreamSource
from llmproxy.redis_client import connect_redis
from tests.settings import with_changes

BUSES = ("in-memory", "redis", "redis-streams")

MakeEvent = Callable[[int], Event]
ReadUntil = Callable[..., Awaitable[list[Delivery]]]


def handed(deliveries: list[Delivery]) -> list[Event | None]:
    """Each delivery's event: the in-memory bus hands out Events, the Redis buses the stored bytes."""
    return [decode_event(d.raw) if d.raw else d.event for d in deliveries]


@dataclass
class Pair:
    bus: EventBus
    source: EventSource


def _build(kind: str, settings: BusSettings, buffer: int) -> Pair:
    """A producer that is not started yet, and a source reading what it publishes."""
    settings = with_changes(settings, kind=kind, buffer_size=buffer)
    if kind == "in-memory":
        bus = InMemoryBus(buffer)
        return Pair(bus, bus.subscribe("file"))
    if kind == "redis":
        return Pair(
            RedisListBus(connect_redis(settings.redis), settings, owns_redis=True, spill_max_items=buffer),
            ListSource(connect_redis(settings.redis), settings, "file", owns_redis=True),
        )
    source = StreamSource(
        connect_redis(settings.redis), settings, "file", group="g-file", consumer="c1", owns_redis=True
    )
    return Pair(
        RedisStreamBus(connect_redis(settings.redis), settings, owns_redis=True, spill_max_items=buffer),
        source,
    )


@pytest.fixture(params=BUSES)
async def make_pair(
    request: pytest.FixtureRequest, settings: BusSettings
) -> AsyncIterator[Callable[[int], Pair]]:
    built: list[Pair] = []

    def factory(buffer: int = 1000) -> Pair:
        pair = _build(request.param, settings, buffer)
        built.append(pair)
        return pair

    yield factory
    for pair in built:
        await pair.bus.aclose()
        await pair.source.aclose()


async def test_every_published_event_is_read_back_once_and_decodes_equal(
    make_pair: Callable[..., Pair], make_event: MakeEvent, read_until: ReadUntil
) -> None:
    pair = make_pair()
    await pair.source.start()
    await pair.bus.start()
    events = [make_event(n) for n in range(50)]
    for event in events:
        pair.bus.publish(event)

    deliveries = await read_until(pair.source, 50)
    await pair.source.ack([d.entry_id for d in deliveries])

    assert handed(deliveries) == events
    assert all(bool(d.raw) == (d.event is None) for d in deliveries)  # sources never decode
    assert all(d.deliveries == 1 for d in deliveries)
    assert await pair.source.read(10, 0.1) == []
    assert pair.bus.stats()["published"] == 50
    assert pair.bus.stats()["dropped"] == 0


async def test_read_returns_nothing_when_no_event_arrives_in_time(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair()
    await pair.source.start()
    await pair.bus.start()

    assert await pair.source.read(10, 0.05) == []


async def test_publish_never_raises_on_a_full_buffer_and_counts_the_dropped_oldest(
    make_pair: Callable[..., Pair], make_event: MakeEvent, read_until: ReadUntil
) -> None:
    pair = make_pair(5)
    await pair.source.start()
    events = [make_event(n) for n in range(12)]
    for event in events:  # nothing drains yet: the Redis drain is not started, nobody reads memory
        pair.bus.publish(event)

    assert pair.bus.stats()["dropped"] == 7
    await pair.bus.start()
    deliveries = await read_until(pair.source, 5)
    assert handed(deliveries) == events[7:]
    assert await pair.source.read(10, 0.1) == []


async def test_closing_the_bus_flushes_what_it_holds(
    make_pair: Callable[..., Pair], make_event: MakeEvent, read_until: ReadUntil
) -> None:
    pair = make_pair()
    await pair.source.start()
    await pair.bus.start()
    events = [make_event(n) for n in range(20)]
    for event in events:
        pair.bus.publish(event)
    await pair.bus.aclose()

    assert pair.bus.stats()["pending"] == 0
    deliveries = await read_until(pair.source, 20)
    assert handed(deliveries) == events


async def test_the_factories_choose_the_bus_named_in_settings(settings: BusSettings) -> None:
    for kind, bus_type, source_type in (
        ("in-memory", InMemoryBus, None),
        ("redis", RedisListBus, ListSource),
        ("redis-streams", RedisStreamBus, StreamSource),
    ):
        chosen = with_changes(settings, kind=kind)
        bus = make_bus(chosen)
        source = make_source(chosen, "file", bus=bus)
        try:
            assert isinstance(bus, bus_type)
            if source_type is not None:
                assert isinstance(source, source_type)
        finally:
            await source.aclose()
            await bus.aclose()
