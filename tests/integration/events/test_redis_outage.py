"""Redis going away: publishing carries on into the spill buffer, and what was held arrives once it is back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from llmproxy.config_sections import BusSettings
from llmproxy.dispatch.backends.file import FileBackend
from llmproxy.dispatch.dispatcher import Dispatcher
from llmproxy.events.bus import BusUnavailable, Delivery
from llmproxy.events.model import Event, decode_event, encode_event
from llmproxy.events.redis_list import RedisListBus
from llmproxy.events.redis_streams import RedisStreamBus, StreamSource
from llmproxy.redis_client import connect_redis
from llmproxy.redis_keys import list_key

MakeEvent = Callable[[int], Event]
Poll = Callable[..., Awaitable[None]]
RedisBus = RedisListBus | RedisStreamBus


@pytest.fixture
async def private(
    redis_server: Any, new_settings: Callable[..., BusSettings]
) -> AsyncIterator[tuple[Any, BusSettings, Redis]]:
    """The private redis-server, settings pointing at it, and a client to look inside it."""
    settings = new_settings(redis_server.addr)
    client = connect_redis(settings.redis)
    yield redis_server, settings, client
    await client.aclose()


async def stored_payloads(client: Redis, kind: str, settings: BusSettings) -> list[bytes]:
    if kind == "redis":
        return list(reversed(await client.lrange(list_key(settings.streams.key), 0, -1)))
    return [fields[b"event"] for _, fields in await client.xrange(settings.streams.key)]


def open_bus(kind: str, settings: BusSettings, **options: Any) -> RedisBus:
    bus_type = RedisListBus if kind == "redis" else RedisStreamBus
    return bus_type(connect_redis(settings.redis), settings, owns_redis=True, **options)


@pytest.mark.parametrize("kind", ["redis", "redis-streams"])
async def test_events_published_while_redis_is_down_arrive_once_it_is_back(
    kind: str, private: tuple[Any, BusSettings, Redis], make_event: MakeEvent, poll: Poll
) -> None:
    server, settings, client = private
    bus = open_bus(kind, settings)
    await bus.start()
    bus.publish(make_event(0))
    assert await bus.flush()

    server.stop()
    during = [make_event(n) for n in range(1, 31)]
    for event in during:
        bus.publish(event)  # must not raise

    async def outage_noticed() -> bool:
        return bus.stats()["unavailable"] == 1

    await poll(outage_noticed, what="the bus to notice the outage")
    assert bus.stats()["spilled"] == 30
    assert bus.stats()["pending"] == 30

    await asyncio.to_thread(server.start)  # same port, empty: no persistence

    async def replayed() -> bool:
        return bus.stats()["pending"] == 0 and bus.stats()["unavailable"] == 0

    await poll(replayed, what="the held events to be written")
    assert await stored_payloads(client, kind, settings) == [encode_event(e) for e in during]
    assert bus.stats() | {"outages": 1, "dropped": 0, "written": 31} == bus.stats()
    await bus.aclose()


@pytest.mark.parametrize("kind", ["redis", "redis-streams"])
async def test_a_full_spill_buffer_drops_the_oldest_events_and_counts_them(
    kind: str, private: tuple[Any, BusSettings, Redis], make_event: MakeEvent, poll: Poll
) -> None:
    server, settings, client = private
    bus = open_bus(kind, settings, spill_max_items=10)
    await bus.start()
    server.stop()
    events = [make_event(n) for n in range(25)]
    for event in events:
        bus.publish(event)

    async def outage_noticed() -> bool:
        return bus.stats()["unavailable"] == 1

    await poll(outage_noticed, what="the bus to notice the outage")
    assert bus.stats()["dropped"] == 15
    await asyncio.to_thread(server.start)

    async def replayed() -> bool:
        return bus.stats()["pending"] == 0 and bus.stats()["unavailable"] == 0

    await poll(replayed, what="the held events to be written")
    assert await stored_payloads(client, kind, settings) == [encode_event(e) for e in events[15:]]
    await bus.aclose()


async def test_a_stream_reader_survives_a_redis_restart_and_reads_what_was_held(
    private: tuple[Any, BusSettings, Redis], make_event: MakeEvent, poll: Poll
) -> None:
    server, settings, _ = private
    bus = open_bus("redis-streams", settings)
    source = StreamSource(
        connect_redis(settings.redis), settings, "file", group="g", consumer="c", owns_redis=True
    )
    await source.start()
    await bus.start()
    bus.publish(make_event(0))
    assert await bus.flush()
    first = await source.read(10, 1.0)
    await source.ack([d.entry_id for d in first])

    server.stop()
    with pytest.raises(BusUnavailable, match=settings.redis.addr):
        await source.read(10, 0.1)
    during = [make_event(n) for n in range(1, 6)]
    for event in during:
        bus.publish(event)
    await asyncio.to_thread(server.start)

    got: list[Delivery] = []

    async def all_read() -> bool:
        try:
            got.extend(await source.read(10, 0.1))
        except BusUnavailable:
            pass  # what a dispatcher does: back off and read again
        return len(got) >= len(during)

    await poll(all_read, what="the reader to get the events held during the outage")
    assert [decode_event(d.raw) for d in got] == during
    await source.aclose()
    await bus.aclose()


async def test_entries_a_dispatcher_collected_before_redis_crashed_are_still_written(
    private: tuple[Any, BusSettings, Redis], make_event: MakeEvent, poll: Poll, tmp_path: Path
) -> None:
    """Redis dies (no persistence: its stream and pending list go with it) while a dispatcher is filling a
    batch: the entries it already read exist only in its hands, and must reach the backend."""
    server, settings, client = private
    source = StreamSource(
        connect_redis(settings.redis), settings, "file", group="g", consumer="c", owns_redis=True
    )
    await source.start()
    log = tmp_path / "events.jsonl"
    backend = FileBackend(log)
    # a batch goes out when 100 are collected or 30 s after the first: these 5 stay in hand until Redis dies
    dispatcher = Dispatcher(source, backend, batch_size=100, flush_interval=30.0)
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stop))
    collected = [make_event(n) for n in range(5)]
    await client.xadd(settings.streams.key, {"event": encode_event(collected[0])})
    await client.xadd(settings.streams.key, {"event": encode_event(collected[1])})

    def read_by_the_dispatcher(count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return (await client.xpending(settings.streams.key, "g"))["pending"] == count

        return check

    await poll(read_by_the_dispatcher(2), what="the dispatcher to read the first entries")
    for event in collected[2:]:  # a second read adds to the batch being filled
        await client.xadd(settings.streams.key, {"event": encode_event(event)})
    await poll(read_by_the_dispatcher(5), what="the dispatcher to read every entry")
    assert not log.exists()

    server.stop()

    async def written() -> bool:
        return log.exists() and len(log.read_bytes().splitlines()) >= len(collected)

    try:
        await poll(written, deadline_s=5.0, what="the collected entries to be written")
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await source.aclose()
        await backend.aclose()
    assert sorted(decode_event(line).id for line in log.read_bytes().splitlines()) == sorted(
        e.id for e in collected
    )
