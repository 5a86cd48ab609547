"""The spill buffer and its drain, without Redis: a fake writer that can refuse or fail."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from llmproxy.events.spill import Drain, SpillBuffer


def buffer(max_items: int = 10, max_bytes: int = 1_000_000) -> SpillBuffer[bytes]:
    return SpillBuffer(max_items, max_bytes, len)


def test_entries_come_out_oldest_first() -> None:
    spill = buffer()
    for item in (b"a", b"b", b"c"):
        spill.append(item)

    assert spill.take(2, 100) == [b"a", b"b"]
    assert spill.take(2, 100) == [b"c"]
    assert (len(spill), spill.bytes) == (0, 0)


def test_a_full_buffer_drops_the_oldest_and_counts_each_drop() -> None:
    spill = buffer(max_items=3)
    for n in range(7):
        spill.append(b"%d" % n)

    assert spill.dropped == 4
    assert spill.take(10, 100) == [b"4", b"5", b"6"]


def test_the_byte_limit_drops_the_oldest_too() -> None:
    spill = buffer(max_bytes=10)
    for item in (b"1234", b"5678", b"abcd"):
        spill.append(item)

    assert spill.dropped == 1
    assert spill.bytes == 8
    assert spill.take(10, 100) == [b"5678", b"abcd"]


def test_a_single_entry_larger_than_the_byte_limit_is_kept_until_something_newer_comes() -> None:
    spill = buffer(max_bytes=4)
    spill.append(b"too large")
    assert len(spill) == 1

    spill.append(b"ok")
    assert spill.take(10, 100) == [b"ok"]
    assert spill.dropped == 1


def test_take_stops_at_the_byte_budget_but_always_returns_one() -> None:
    spill = buffer()
    for item in (b"aaaa", b"bbbb", b"cccc"):
        spill.append(item)

    assert spill.take(10, 2) == [b"aaaa"]
    assert spill.take(10, 8) == [b"bbbb", b"cccc"]


def test_restored_entries_go_back_in_front_in_their_order() -> None:
    spill = buffer()
    for item in (b"a", b"b", b"c"):
        spill.append(item)
    batch = spill.take(2, 100)
    spill.append(b"d")

    spill.restore(batch)

    assert spill.take(10, 100) == [b"a", b"b", b"c", b"d"]


def test_restoring_into_a_full_buffer_drops_the_oldest() -> None:
    spill = buffer(max_items=3)
    for item in (b"a", b"b", b"c"):
        spill.append(item)
    batch = spill.take(2, 100)
    spill.append(b"d")
    spill.append(b"e")

    spill.restore(batch)

    assert spill.take(10, 100) == [b"c", b"d", b"e"]
    assert spill.dropped == 2


def test_an_outage_is_logged_once_with_the_address_and_counts_what_it_holds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spill = buffer()
    spill.append(b"before")
    with caplog.at_level(logging.WARNING, logger="llmproxy.events.spill"):
        for _ in range(3):
            spill.outage("10.0.0.7:6379", ConnectionError("refused"))
        spill.append(b"during")
        spill.append(b"during")

    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1
    assert "10.0.0.7:6379" in unreachable[0].getMessage()
    assert (spill.down, spill.outages, spill.spilled) == (True, 1, 3)


def test_recovery_ends_the_outage_so_the_next_one_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    spill = buffer()
    with caplog.at_level(logging.WARNING, logger="llmproxy.events.spill"):
        spill.outage("redis:6379", "refused")
        spill.recovered("redis:6379")
        spill.outage("redis:6379", "refused")

    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 2
    assert sum("reachable again" in m for m in messages) == 1
    assert spill.outages == 2


class FakeRedis:
    """A writer that fails while ``down`` and records every batch it accepted."""

    def __init__(self) -> None:
        self.down = False
        self.written: list[bytes] = []
        self.batches = 0
        self.refuse: set[bytes] = set()

    async def write(self, batch: list[bytes]) -> list[bytes]:
        await asyncio.sleep(0)
        if self.down:
            raise ConnectionError("connection refused")
        self.batches += 1
        accepted = [item for item in batch if item not in self.refuse]
        self.written.extend(accepted)
        return [item for item in batch if item in self.refuse]


async def wait_for(check: Callable[[], bool], deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


async def test_the_drain_writes_many_entries_per_round_trip() -> None:
    fake = FakeRedis()
    drain = Drain(buffer(max_items=1000), fake.write, address="fake")
    for n in range(300):
        drain.put(b"%d" % n)
    drain.start()

    assert await drain.flush(5.0)
    assert fake.written == [b"%d" % n for n in range(300)]
    assert fake.batches == 1
    assert drain.stats()["written"] == 300
    await drain.aclose()


async def lingering(linger_s: float) -> tuple[FakeRedis, Drain[bytes]]:
    """A started drain that has just written one entry (a) and now lingers for ``linger_s``."""
    fake = FakeRedis()
    drain = Drain(buffer(), fake.write, address="fake", linger_s=linger_s)
    drain.start()
    drain.put(b"a")
    await wait_for(lambda: fake.batches == 1)
    return fake, drain


async def test_after_a_small_write_the_drain_lingers_so_a_trickle_shares_the_next_write() -> None:
    fake, drain = await lingering(0.5)
    for item in (b"b", b"c", b"d"):  # one at a time, as requests finish: 3 writes without the linger
        drain.put(item)
        await asyncio.sleep(0.01)

    assert await drain.flush(5.0)
    assert fake.written == [b"a", b"b", b"c", b"d"]
    assert fake.batches == 2
    await drain.aclose()


async def test_after_a_full_write_of_64_the_drain_does_not_linger() -> None:
    fake = FakeRedis()
    drain = Drain(buffer(max_items=1000), fake.write, address="fake", linger_s=60.0)
    for n in range(64):
        drain.put(b"%d" % n)
    drain.start()
    await wait_for(lambda: fake.batches == 1)

    drain.put(b"next")

    await wait_for(lambda: fake.batches == 2)  # a 60 s linger after the 64 would hold it
    assert fake.written[-1] == b"next"
    await drain.aclose()


async def test_closing_ends_the_linger_and_writes_what_arrived_during_it() -> None:
    fake, drain = await lingering(60.0)
    drain.put(b"b")

    await drain.aclose(timeout_s=5.0)  # a linger left running would be cancelled here, dropping b

    assert fake.written == [b"a", b"b"]
    assert drain.stats() | {"written": 2, "dropped": 0, "pending": 0} == drain.stats()


async def test_the_drain_holds_entries_while_the_writer_fails_and_replays_them_in_order() -> None:
    fake = FakeRedis()
    drain = Drain(buffer(), fake.write, address="fake")
    drain.start()
    fake.down = True
    for item in (b"a", b"b", b"c"):
        drain.put(item)
    await wait_for(lambda: drain.stats()["unavailable"] == 1)
    drain.put(b"d")

    fake.down = False

    assert await drain.flush(5.0)
    assert fake.written == [b"a", b"b", b"c", b"d"]
    assert drain.stats() | {"spilled": 4, "outages": 1, "unavailable": 0, "pending": 0} == drain.stats()
    await drain.aclose()


async def test_entries_the_writer_refuses_are_retried() -> None:
    fake = FakeRedis()
    fake.refuse = {b"b"}
    drain = Drain(buffer(), fake.write, address="fake")
    drain.start()
    for item in (b"a", b"b", b"c"):
        drain.put(item)
    await wait_for(lambda: drain.stats()["unavailable"] == 1)

    fake.refuse = set()

    assert await drain.flush(5.0)
    assert sorted(fake.written) == [b"a", b"b", b"c"]
    await drain.aclose()


async def test_closing_while_the_writer_fails_gives_up_after_the_timeout_and_counts_the_loss() -> None:
    fake = FakeRedis()
    fake.down = True
    drain = Drain(buffer(), fake.write, address="fake")
    drain.start()
    for item in (b"a", b"b"):
        drain.put(item)

    await drain.aclose(timeout_s=0.2)

    assert drain.stats() | {"dropped": 2, "pending": 0, "written": 0} == drain.stats()


async def test_closing_writes_what_is_held_first() -> None:
    fake = FakeRedis()
    drain = Drain(buffer(), fake.write, address="fake")
    drain.start()
    for item in (b"a", b"b"):
        drain.put(item)

    await drain.aclose()

    assert fake.written == [b"a", b"b"]
    assert drain.stats()["dropped"] == 0


async def test_entries_put_after_close_are_counted_as_dropped() -> None:
    drain = Drain(buffer(), FakeRedis().write, address="fake")
    await drain.aclose()

    drain.put(b"late")

    assert drain.stats() | {"published": 1, "dropped": 1, "pending": 0} == drain.stats()
