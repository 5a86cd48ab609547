"""The Dispatcher reading the real buses: in-memory into a file, Redis Streams into Lunary and a file.

Redis Streams is at-least-once end to end: entries are XACKed only after the backend accepted them,
refused ones land in `<stream>:dead`, and a batch left unacked is reclaimed and written exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from llmproxy.config import Settings
from llmproxy.config_sections import BusSettings
from llmproxy.dispatch.backends.base import DeliveryError
from llmproxy.dispatch.backends.file import FileBackend
from llmproxy.dispatch.backends.lunary import LunaryBackend
from llmproxy.dispatch.dispatcher import Dispatcher
from llmproxy.events.bus import EventSource
from llmproxy.events.factory import make_bus, make_source
from llmproxy.events.memory import InMemoryBus
from llmproxy.events.model import Event, decode_event, encode_event
from llmproxy.redis_keys import list_key
from tests.fakes.lunary import FakeLunary
from tests.settings import with_changes
from tests.unit.dispatch.doubles import DEADLINE_S, ScriptedBackend, Waits, chat_event, make_event


async def run_until(dispatcher: Dispatcher, done: Callable[[], Awaitable[bool]]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        async with asyncio.timeout(DEADLINE_S):
            while not await done():
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)


def file_ids(path: Path) -> list[str]:
    return [decode_event(line).id for line in path.read_bytes().splitlines()] if path.exists() else []


async def test_events_published_on_the_in_memory_bus_reach_the_file(tmp_path: Path) -> None:
    bus = InMemoryBus(buffer_size=1000)
    source = bus.subscribe("file")
    path = tmp_path / "events.jsonl"
    backend = FileBackend(path)
    published = [make_event() for _ in range(250)]
    for event in published:
        bus.publish(event)

    async def all_written() -> bool:
        return len(file_ids(path)) == 250

    await run_until(Dispatcher(source, backend, flush_interval=0.05, max_attempts=None), all_written)
    await backend.aclose()
    await source.aclose()
    assert file_ids(path) == [e.id for e in published]


@pytest.fixture
async def settings() -> AsyncIterator[BusSettings]:
    s = BusSettings.of(
        with_changes(
            Settings(),
            events={"bus": "redis-streams"},
            redis={"addr": "127.0.0.1:6379"},
            streams={
                "key": f"test:{uuid4().hex}:events",
                "consumer_name": "dispatch-test",
                "claim_time": 0.2,
            },
        )
    )
    yield s
    redis = Redis(host="127.0.0.1", port=6379)
    await redis.delete(s.streams.key, f"{s.streams.key}:dead", list_key(s.streams.key))
    await redis.aclose()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=6379)
    yield client
    await client.aclose()


async def publish(settings: BusSettings, events: list[Event]) -> None:
    bus = make_bus(settings)
    await bus.start()
    for event in events:
        bus.publish(event)
    await bus.aclose()  # flushes into the stream


async def started_source(settings: BusSettings, service: str) -> EventSource:
    source = make_source(settings, service)
    await source.start()
    return source


async def test_a_500_then_200_from_lunary_delivers_once_and_acks_every_entry(
    settings: BusSettings, redis: Redis, fake_lunary: FakeLunary
) -> None:
    source = await started_source(settings, "lunary")
    events = [chat_event() for _ in range(5)]
    await publish(settings, events)
    fake_lunary.inject({"status": 500}, {"status": 503, "headers": {"Retry-After": "0"}})
    backend = LunaryBackend(fake_lunary.url, fake_lunary.api_key)

    async def all_acked() -> bool:
        return len(fake_lunary.runs) == 5 and (await source.lag())["pending"] == 0

    await run_until(Dispatcher(source, backend, flush_interval=0.05, backoff=Waits()), all_acked)
    await backend.aclose()
    await source.aclose()
    assert sorted(fake_lunary.runs) == sorted(e.id for e in events)
    assert all(run["status"] == "success" for run in fake_lunary.runs.values())
    assert len(fake_lunary.requests) == 3 and fake_lunary.violations == []


async def test_a_refused_event_lands_in_the_dead_letter_stream_with_the_error(
    settings: BusSettings, redis: Redis, fake_lunary: FakeLunary
) -> None:
    source = await started_source(settings, "lunary")
    await publish(settings, [chat_event()])
    fake_lunary.inject({"status": 400, "body": "bad request"})
    backend = LunaryBackend(fake_lunary.url, fake_lunary.api_key)
    dead_key = f"{settings.streams.key}:dead"

    async def dead_lettered() -> bool:
        return await redis.xlen(dead_key) == 1

    await run_until(Dispatcher(source, backend, flush_interval=0.05, backoff=Waits()), dead_lettered)
    await backend.aclose()
    entries = await redis.xrange(dead_key)
    assert entries is not None and len(entries) == 1
    fields = entries[0][1]
    assert fields is not None
    assert fields[b"error"] == b"lunary: HTTP 400: bad request"
    assert (await source.lag())["pending"] == 0
    await source.aclose()


async def test_a_batch_left_unacked_is_reclaimed_and_written_exactly_once(
    settings: BusSettings, redis: Redis, tmp_path: Path
) -> None:
    source = await started_source(settings, "file")
    events = [make_event() for _ in range(3)]
    await publish(settings, events)
    path = tmp_path / "events.jsonl"
    file_backend = FileBackend(path)

    class FlakyFile(ScriptedBackend):
        """Writes, then fails as if the process died before XACK: the first send is left pending."""

        async def send(self, batch: list[Event]) -> None:
            await file_backend.send(batch)
            await super().send(batch)

    flaky = FlakyFile(DeliveryError("lost the ack", transient=True))
    dispatcher = Dispatcher(source, flaky, flush_interval=0.05, max_attempts=1, backoff=Waits())

    async def delivered() -> bool:
        return dispatcher.stats.delivered == 3 and (await source.lag())["pending"] == 0

    await run_until(dispatcher, delivered)  # the pending entries are claimed after claim_time (0.2 s)
    await file_backend.aclose()
    await source.aclose()
    assert dispatcher.stats.failed == 3
    assert len(flaky.sends) == 2
    assert file_ids(path) == [e.id for e in events]


async def test_a_transient_failure_on_the_list_bus_loses_nothing_the_read_ahead_popped(
    settings: BusSettings, redis: Redis
) -> None:
    """The list bus never redelivers: a batch read ahead (popped) while a send fails must still be sent."""
    settings = with_changes(settings, kind="redis")
    source = await started_source(settings, "lunary")
    events = [make_event() for _ in range(20)]
    await publish(settings, events)

    class SlowFirst(ScriptedBackend):
        async def send(self, batch: list[Event]) -> None:
            await asyncio.sleep(0.05)  # the read-ahead pops the next batch meanwhile
            await super().send(batch)

    backend = SlowFirst(DeliveryError("upstream 503", transient=True))
    dispatcher = Dispatcher(source, backend, batch_size=5, flush_interval=0.01, backoff=Waits())

    async def all_sent() -> bool:
        return len(backend.accepted) == 20

    await run_until(dispatcher, all_sent)
    await source.aclose()
    assert sorted(backend.accepted) == sorted(e.id for e in events)
    assert await redis.llen(list_key(settings.streams.key)) == 0


async def test_the_file_worker_writes_stored_bytes_and_dead_letters_what_is_not_an_event(
    settings: BusSettings, redis: Redis, tmp_path: Path
) -> None:
    """The path a `file` worker takes: entries checked (EventShape), never decoded and encoded again."""
    source = await started_source(settings, "file")
    stored = encode_event(chat_event())[:-1] + b',"added_later":1}'  # a decode and re-encode would drop it
    await redis.xadd(settings.streams.key, {"event": stored})
    wrong_status = stored.replace(b'"status":200', b'"status":"200"')
    bad_utf8 = stored.replace(b'"response_body":"', b'"response_body":"\xff')
    for raw in (wrong_status, bad_utf8):
        await redis.xadd(settings.streams.key, {"event": raw})
    path, dead_key = tmp_path / "events.jsonl", f"{settings.streams.key}:dead"
    backend = FileBackend(path)

    async def done() -> bool:
        return path.exists() and await redis.xlen(dead_key) == 2

    await run_until(Dispatcher(source, backend, flush_interval=0.05, backoff=Waits()), done)
    await backend.aclose()
    await source.aclose()
    assert path.read_bytes() == stored + b"\n"
    dead = await redis.xrange(dead_key)
    assert [fields[b"event"] for _, fields in dead] == [wrong_status, bad_utf8]
    assert {fields[b"error"] for _, fields in dead} == {b"undecodable event"}
    group = f"{settings.streams.consumer_group}-file"
    assert (await redis.xpending(settings.streams.key, group))["pending"] == 0


async def test_a_send_that_outlasts_the_claim_time_is_sent_and_counted_once(
    settings: BusSettings, redis: Redis
) -> None:
    """Reads claim the entries of a slow send back (idle past claim_time) before its XACK lands: they are
    this dispatcher's own, not redeliveries, and must not be sent again."""
    source = await started_source(settings, "lunary")
    events = [make_event() for _ in range(3)]
    await publish(settings, events)

    class SlowFirst(ScriptedBackend):
        async def send(self, batch: list[Event]) -> None:
            if not self.sends:
                await asyncio.sleep(3 * settings.streams.claim_time)
            await super().send(batch)

    backend = SlowFirst()
    dispatcher = Dispatcher(source, backend, batch_size=10, flush_interval=0.05, backoff=Waits())
    settled_at: list[float] = []

    async def acked_and_then_some() -> bool:  # then two more claim times, for any second send to happen
        loop = asyncio.get_running_loop()
        if not settled_at and dispatcher.stats.delivered and (await source.lag())["pending"] == 0:
            settled_at.append(loop.time())
        return bool(settled_at) and loop.time() - settled_at[0] > 2 * settings.streams.claim_time

    await run_until(dispatcher, acked_and_then_some)
    await source.aclose()
    assert [len(batch) for batch in backend.sends] == [3]
    assert dispatcher.stats.delivered == 3
