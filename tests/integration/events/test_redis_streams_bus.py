"""Redis Streams specifics: groups share or fan out, idle entries are claimed, dead letters, trimming, NOGROUP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from llmproxy.config_sections import BusSettings
from llmproxy.events.bus import BusUnavailable, Delivery
from llmproxy.events.model import Event, decode_event, encode_event
from llmproxy.events.redis_streams import RedisStreamBus, StreamSource
from llmproxy.redis_client import connect_redis
from llmproxy.redis_keys import dead_letter_key
from tests.settings import with_changes

MakeEvent = Callable[[int], Event]
ReadUntil = Callable[..., Awaitable[list[Delivery]]]
Poll = Callable[..., Awaitable[None]]


@pytest.fixture
async def open_source(settings: BusSettings) -> AsyncIterator[Callable[..., Awaitable[StreamSource]]]:
    opened: list[StreamSource] = []

    async def factory(
        group: str = "g-file", consumer: str = "c1", service: str = "file", using: BusSettings | None = None
    ) -> StreamSource:
        """``using``: changed settings (``with_changes``) for this source; the fixture's by default."""
        chosen = using or settings
        client = connect_redis(chosen.redis)
        source = StreamSource(client, chosen, service, group=group, consumer=consumer, owns_redis=True)
        opened.append(source)
        await source.start()
        return source

    yield factory
    for source in opened:
        await source.aclose()


@pytest.fixture
async def bus(settings: BusSettings) -> AsyncIterator[RedisStreamBus]:
    producer = RedisStreamBus(connect_redis(settings.redis), settings, owns_redis=True)
    await producer.start()
    yield producer
    await producer.aclose()


async def publish_all(bus: RedisStreamBus, events: list[Event]) -> None:
    for event in events:
        bus.publish(event)
    assert await bus.flush()  # every event is in the stream when this returns


async def test_entries_carry_the_encoded_event_and_its_id(
    bus: RedisStreamBus, settings: BusSettings, redis: Redis, make_event: MakeEvent
) -> None:
    event = make_event(1)
    await publish_all(bus, [event])

    [(_, fields)] = await redis.xrange(settings.streams.key)
    assert fields == {b"event": encode_event(event), b"id": event.id.encode()}


async def test_two_consumers_of_one_group_share_the_entries(
    bus: RedisStreamBus, open_source: Callable[..., Awaitable[StreamSource]], make_event: MakeEvent
) -> None:
    first = await open_source(consumer="c1")
    second = await open_source(consumer="c2")
    events = [make_event(n) for n in range(20)]
    await publish_all(bus, events)

    got_first = await first.read(5, 0.1)
    got_second = await second.read(100, 0.1)

    assert len(got_first) == 5 and len(got_second) == 15
    assert [decode_event(d.raw) for d in got_first + got_second] == events
    assert await first.read(100, 0.05) == []


async def test_each_group_gets_every_entry(
    bus: RedisStreamBus, open_source: Callable[..., Awaitable[StreamSource]], make_event: MakeEvent
) -> None:
    file_source = await open_source(group="g-file", service="file")
    lunary_source = await open_source(group="g-lunary", service="lunary")
    events = [make_event(n) for n in range(10)]
    await publish_all(bus, events)

    assert [decode_event(d.raw) for d in await file_source.read(100, 0.1)] == events
    assert [decode_event(d.raw) for d in await lunary_source.read(100, 0.1)] == events


async def test_unacked_entries_are_claimed_by_another_consumer_after_the_claim_time(
    bus: RedisStreamBus,
    settings: BusSettings,
    open_source: Callable[..., Awaitable[StreamSource]],
    make_event: MakeEvent,
    read_until: ReadUntil,
) -> None:
    claiming = with_changes(settings, streams={"claim_time": 0.2})
    crashed = await open_source(consumer="crashed", using=claiming)
    survivor = await open_source(consumer="survivor", using=claiming)
    events = [make_event(n) for n in range(3)]
    await publish_all(bus, events)
    taken = await crashed.read(10, 0.1)  # and never acked

    claimed = await read_until(survivor, 3)

    assert [d.entry_id for d in claimed] == [d.entry_id for d in taken]
    assert [decode_event(d.raw) for d in claimed] == events
    assert [d.deliveries for d in claimed] == [2, 2, 2]
    await survivor.ack([d.entry_id for d in claimed])
    assert (await survivor.lag())["pending"] == 0


async def test_acked_entries_are_no_longer_pending(
    bus: RedisStreamBus, open_source: Callable[..., Awaitable[StreamSource]], make_event: MakeEvent
) -> None:
    source = await open_source()
    await publish_all(bus, [make_event(n) for n in range(4)])
    got = await source.read(10, 0.1)
    assert (await source.lag())["pending"] == 4

    await source.ack([d.entry_id for d in got])

    assert await source.lag() == {"length": 4, "pending": 0, "trimmed": 0, "lag": 0}


async def test_dead_letters_move_to_the_dead_stream_with_the_error_and_leave_the_pending_list(
    bus: RedisStreamBus,
    settings: BusSettings,
    redis: Redis,
    open_source: Callable[..., Awaitable[StreamSource]],
    make_event: MakeEvent,
) -> None:
    source = await open_source(service="lunary")
    events = [make_event(n) for n in range(3)]
    await publish_all(bus, events)
    got = await source.read(10, 0.1)

    await source.dead_letter(got[:2], "HTTP 400: invalid payload")

    dead = await redis.xrange(dead_letter_key(settings.streams.key))
    assert [fields for _, fields in dead] == [
        {
            b"event": encode_event(events[n]),
            b"error": b"HTTP 400: invalid payload",
            b"service": b"lunary",
            b"original_id": got[n].entry_id.encode(),
            b"deliveries": b"1",
        }
        for n in range(2)
    ]
    pending = await redis.xpending_range(settings.streams.key, "g-file", "-", "+", 10)
    assert [p["message_id"].decode() for p in pending] == [got[2].entry_id]


async def test_entries_are_handed_out_as_stored_and_one_without_an_event_field_as_its_fields(
    settings: BusSettings, redis: Redis, open_source: Callable[..., Awaitable[StreamSource]]
) -> None:
    source = await open_source()
    await redis.xadd(settings.streams.key, {"event": b'{"id": 1}'})
    await redis.xadd(settings.streams.key, {"other": b"x"})

    bad_json, no_event_field = await source.read(10, 0.1)

    assert (bad_json.event, bad_json.raw) == (None, b'{"id": 1}')
    assert (no_event_field.event, no_event_field.raw) == (None, b'{"other":"x"}')


async def test_maxlen_trims_the_stream_approximately(
    settings: BusSettings, redis: Redis, make_event: MakeEvent
) -> None:
    settings = with_changes(settings, streams={"max_len": 100})
    bus = RedisStreamBus(connect_redis(settings.redis), settings, owns_redis=True)
    await bus.start()
    await publish_all(bus, [make_event(n) for n in range(1000)])
    await bus.aclose()
    assert bus.stats()["written"] == 1000

    node_entries = int((await redis.config_get("stream-node-max-entries"))["stream-node-max-entries"])
    assert 100 <= await redis.xlen(settings.streams.key) <= 100 + node_entries


async def test_a_new_group_does_not_replay_entries_written_before_it(
    bus: RedisStreamBus, open_source: Callable[..., Awaitable[StreamSource]], make_event: MakeEvent
) -> None:
    await publish_all(bus, [make_event(n) for n in range(5)])
    late = await open_source(group="g-late")
    assert await late.read(10, 0.05) == []

    newer = make_event(99)
    await publish_all(bus, [newer])

    assert [decode_event(d.raw) for d in await late.read(10, 0.1)] == [newer]


async def test_an_existing_group_keeps_its_position(
    bus: RedisStreamBus, open_source: Callable[..., Awaitable[StreamSource]], make_event: MakeEvent
) -> None:
    first = await open_source(consumer="c1")
    events = [make_event(n) for n in range(5)]
    await publish_all(bus, events)
    read_before = await first.read(3, 0.1)
    await first.ack([d.entry_id for d in read_before])
    await first.aclose()

    restarted = await open_source(consumer="c1-restarted")

    assert [decode_event(d.raw) for d in await restarted.read(10, 0.1)] == events[3:]


async def test_a_vanished_group_is_recreated_and_reading_continues(
    settings: BusSettings,
    redis: Redis,
    open_source: Callable[..., Awaitable[StreamSource]],
    make_event: MakeEvent,
    poll: Poll,
) -> None:
    source = await open_source()
    before = make_event(1)
    await redis.xadd(settings.streams.key, {"event": encode_event(before)})
    [seen] = await source.read(10, 0.1)
    await source.ack([seen.entry_id])
    await redis.delete(settings.streams.key)  # what a restart without persistence leaves

    async def clock_moved_past_last_entry() -> bool:
        seconds, micros = await redis.time()
        return seconds * 1000 + micros // 1000 > int(seen.entry_id.split("-")[0])

    await poll(clock_moved_past_last_entry, what="the Redis clock to pass the last entry id")
    after = make_event(2)
    await redis.xadd(settings.streams.key, {"event": encode_event(after)})

    assert [decode_event(d.raw) for d in await source.read(10, 0.1)] == [after]


async def test_an_unreachable_redis_raises_bus_unavailable_naming_the_address(settings: BusSettings) -> None:
    settings = with_changes(settings, redis={"addr": "127.0.0.1:1"})
    source = StreamSource(
        connect_redis(settings.redis), settings, "file", group="g", consumer="c", owns_redis=True
    )
    producer = RedisStreamBus(connect_redis(settings.redis), settings, owns_redis=True)

    with pytest.raises(BusUnavailable, match="127.0.0.1:1"):
        await source.read(10, 0.1)
    with pytest.raises(BusUnavailable, match="127.0.0.1:1"):
        await producer.start()
    await source.aclose()
    await producer.aclose()


async def test_a_closing_consumer_leaves_the_group_only_when_nothing_is_pending_for_it(
    bus: RedisStreamBus,
    settings: BusSettings,
    redis: Redis,
    open_source: Callable[..., Awaitable[StreamSource]],
    make_event: MakeEvent,
) -> None:
    idle = await open_source(consumer="idle")
    busy = await open_source(consumer="busy")
    await publish_all(bus, [make_event(1)])
    assert len(await busy.read(10, 0.1)) == 1  # never acked
    await idle.read(10, 0.01)

    await idle.aclose()
    await busy.aclose()

    consumers = await redis.xinfo_consumers(settings.streams.key, "g-file")
    assert [(c["name"], c["pending"]) for c in consumers] == [(b"busy", 1)]


async def test_pending_entries_trimmed_away_by_maxlen_are_counted_when_claimed(
    settings: BusSettings,
    redis: Redis,
    open_source: Callable[..., Awaitable[StreamSource]],
    make_event: MakeEvent,
    poll: Poll,
) -> None:
    claiming = with_changes(settings, streams={"claim_time": 0.2})
    crashed = await open_source(consumer="crashed", using=claiming)
    for n in range(5):
        await redis.xadd(settings.streams.key, {"event": encode_event(make_event(n))})
    assert len(await crashed.read(10, 0.1)) == 5  # never acked
    for _ in range(300):  # MAXLEN ~ trims whole nodes, the oldest (with the pending five) first
        await redis.xadd(settings.streams.key, {"event": b"{}"}, maxlen=10, approximate=True)
    survivor = await open_source(consumer="survivor", using=claiming)

    async def trimmed_entries_noticed() -> bool:
        await survivor.read(500, 0.01)
        return (await survivor.lag())["trimmed"] == 5

    await poll(trimmed_entries_noticed, what="the claim to find the trimmed entries")
    assert (
        await redis.xpending_range(settings.streams.key, "g-file", "-", "+", 10, consumername="crashed") == []
    )


async def test_consumers_of_gone_workers_are_removed_once_their_entries_were_claimed(
    settings: BusSettings,
    redis: Redis,
    open_source: Callable[..., Awaitable[StreamSource]],
    make_event: MakeEvent,
    poll: Poll,
) -> None:
    """A worker killed with entries in hand leaves its consumer behind; once a live one claimed them and the
    consumer stayed idle (twice the claim or block time), a live one deletes it, so the group lists the
    workers that run. A live consumer that gets nothing is kept (on Redis 7.0 an empty read leaves it idle)."""
    quick = with_changes(settings, streams={"claim_time": 0.2, "block_time": 0.1})
    key = settings.streams.key
    survivor = await open_source(consumer="survivor", using=quick)
    waiting = await open_source(
        consumer="waiting", using=quick
    )  # one claims the entry, the other gets nothing
    killed = await open_source(consumer="killed", using=quick)
    await redis.xadd(key, {"event": encode_event(make_event(1))})
    assert len(await killed.read(10, 0.1)) == 1  # never acked: the worker was killed holding it
    await redis.xgroup_createconsumer(key, "g-file", "killed-idle")  # one that had nothing in hand
    claimed: list[Delivery] = []

    async def consumers() -> set[str]:
        for live in (survivor, waiting):
            got = await live.read(10, 0.05)
            await live.ack([d.entry_id for d in got])
            claimed.extend(got)
        return {c["name"].decode() for c in await redis.xinfo_consumers(key, "g-file")}

    async def only_live_consumers_left() -> bool:
        return await consumers() == {"survivor", "waiting"}

    await poll(only_live_consumers_left, what="the consumers of gone workers to be removed")
    assert [d.deliveries for d in claimed] == [2]
    for _ in range(10):  # past the idle time after which a consumer is taken for gone (0.4 s)
        assert await consumers() == {"survivor", "waiting"}
