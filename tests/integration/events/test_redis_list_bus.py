"""Redis list specifics: at-most-once popping, undecodable payloads, the dead-letter list, LTRIM bound."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from redis.asyncio import Redis

from llmproxy.config_sections import BusSettings
from llmproxy.events.model import Event, encode_event
from llmproxy.events.redis_list import ListSource, RedisListBus
from llmproxy.redis_client import connect_redis
from llmproxy.redis_keys import dead_list_key, list_key
from tests.settings import with_changes

MakeEvent = Callable[[int], Event]


async def test_a_read_event_is_gone_from_redis(
    settings: BusSettings, redis: Redis, make_event: MakeEvent
) -> None:
    source = ListSource(connect_redis(settings.redis), settings, "file", owns_redis=True)
    stored = encode_event(make_event(1))
    await redis.lpush(list_key(settings.streams.key), stored)

    [delivery] = await source.read(10, 0.1)

    assert (delivery.event, delivery.raw) == (None, stored)  # as stored, not decoded
    assert await redis.llen(list_key(settings.streams.key)) == 0
    await source.aclose()


async def test_payloads_that_are_no_event_are_handed_out_as_stored_and_dead_lettered_with_the_error(
    settings: BusSettings, redis: Redis
) -> None:
    source = ListSource(connect_redis(settings.redis), settings, "lunary", owns_redis=True)
    await redis.lpush(list_key(settings.streams.key), b"not json")

    [delivery] = await source.read(10, 0.1)
    await source.dead_letter([delivery], "undecodable")

    assert (delivery.event, delivery.raw) == (None, b"not json")
    [record] = await redis.lrange(dead_list_key(settings.streams.key), 0, -1)
    assert msgspec.json.decode(record) == {
        "error": "undecodable",
        "service": "lunary",
        "original_id": delivery.entry_id,
        "deliveries": 1,
        "event": "not json",
    }
    await source.aclose()


async def test_the_list_keeps_only_the_newest_max_len_events(
    settings: BusSettings, redis: Redis, make_event: MakeEvent
) -> None:
    settings = with_changes(settings, streams={"max_len": 10})
    bus = RedisListBus(connect_redis(settings.redis), settings, owns_redis=True)
    await bus.start()
    events = [make_event(n) for n in range(25)]
    for event in events:
        bus.publish(event)
    await bus.aclose()

    stored = list(reversed(await redis.lrange(list_key(settings.streams.key), 0, -1)))
    assert stored == [encode_event(e) for e in events[15:]]
