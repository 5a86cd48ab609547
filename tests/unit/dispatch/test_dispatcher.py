"""Dispatcher: batching, ack only after the backend accepted, retry, dead letters and a prompt stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import msgspec
import pytest

from llmproxy.dispatch.backends.base import DeliveryError
from llmproxy.dispatch.dispatcher import Dispatcher
from llmproxy.events.bus import Delivery
from llmproxy.events.model import Event, encode_event
from tests.unit.dispatch.doubles import (
    DEADLINE_S,
    GatedBackend,
    RecordingSource,
    ScriptedBackend,
    Waits,
    make_event,
)


def transient(retry_after: float | None = None) -> DeliveryError:
    return DeliveryError("HTTP 503", transient=True, retry_after=retry_after)


def permanent(*, whole_batch: bool = False) -> DeliveryError:
    return DeliveryError("HTTP 400: bad", transient=False, whole_batch=whole_batch)


@asynccontextmanager
async def running(dispatcher: Dispatcher) -> AsyncIterator[None]:
    """The dispatcher runs inside the block and is stopped (and awaited) when it ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)


async def until(done: Callable[[], bool]) -> None:
    """Poll ``done()`` until it holds, within the tests' deadline."""
    async with asyncio.timeout(DEADLINE_S):
        while not done():
            await asyncio.sleep(0.005)


async def run_until(dispatcher: Dispatcher, done: Callable[[], bool]) -> None:
    """Run the dispatcher until `done()` holds (polled, with a deadline), then stop it."""
    async with running(dispatcher):
        await until(done)


def events(n: int) -> list[Event]:
    return [make_event() for _ in range(n)]


async def test_events_are_sent_in_batches_of_batch_size_and_all_acked() -> None:
    source, backend = RecordingSource(), ScriptedBackend()
    sent = events(250)
    source.put(*sent)
    dispatcher = Dispatcher(source, backend, batch_size=100, flush_interval=0.05)
    await run_until(dispatcher, lambda: len(source.acked) == 250)
    assert [len(b) for b in backend.sends] == [100, 100, 50]
    assert backend.accepted == [e.id for e in sent]
    assert dispatcher.stats.delivered == 250 and dispatcher.stats.batches == 3


async def test_a_partial_batch_is_flushed_after_the_flush_interval() -> None:
    source, backend = RecordingSource(), ScriptedBackend()
    source.put(*events(3))
    await run_until(
        Dispatcher(source, backend, batch_size=100, flush_interval=0.05), lambda: bool(backend.sends)
    )
    assert [len(b) for b in backend.sends] == [3]


async def test_a_trickle_of_events_is_fetched_in_few_reads() -> None:
    """After a short read the dispatcher lingers (READ_LINGER_S) instead of reading each event alone."""
    source, backend = RecordingSource(), ScriptedBackend()
    dispatcher = Dispatcher(source, backend, batch_size=100, flush_interval=2.0)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        source.put(*events(1))
        async with asyncio.timeout(DEADLINE_S):
            while source.waiting:  # the first event was read
                await asyncio.sleep(0.001)
            reads_after_first = source.reads
            for event in events(9):  # one every millisecond: 9 reads without the linger
                source.put(event)
                await asyncio.sleep(0.001)
            while len(source.handed) < 10:
                await asyncio.sleep(0.005)
        assert source.reads - reads_after_first == 1
        assert backend.sends == []  # still short of batch_size, within flush_interval
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)


async def test_the_next_batch_is_read_while_the_current_one_is_being_sent() -> None:
    source, backend = RecordingSource(), GatedBackend()
    gate, entered = backend.gate, backend.entered
    source.put(*events(150))
    stop = asyncio.Event()
    task = asyncio.create_task(Dispatcher(source, backend, batch_size=100, flush_interval=0.05).run(stop))
    try:
        await asyncio.wait_for(entered.wait(), DEADLINE_S)
        async with asyncio.timeout(DEADLINE_S):
            while len(source.handed) < 150:  # read ahead: the last 50 are fetched during the first send
                await asyncio.sleep(0.005)
        assert source.acked == []
        gate.set()
        async with asyncio.timeout(DEADLINE_S):
            while len(source.acked) < 150:
                await asyncio.sleep(0.005)
        assert [len(b) for b in backend.sends] == [100, 50]
    finally:
        gate.set()
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)


class HeldAcks(RecordingSource):
    """Every ack waits at ``gate`` (``started`` counts the acks begun), like a slow XACK round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.started = asyncio.Event(), 0

    async def ack(self, entry_ids: list[str]) -> None:
        self.started += 1
        await self.gate.wait()
        await super().ack(entry_ids)


async def test_the_next_batch_is_sent_while_the_last_one_is_being_acked() -> None:
    source, backend = HeldAcks(), ScriptedBackend()
    sent = events(4)
    source.put(*sent)
    dispatcher = Dispatcher(source, backend, batch_size=2, flush_interval=0.05)
    async with running(dispatcher):
        await until(lambda: len(backend.sends) == 2)  # the first ack is still held
        assert source.started == 1 and source.acked == [] and dispatcher.stats.delivered == 0
        source.gate.set()
        await until(lambda: len(source.acked) == 4)
    assert backend.accepted == [e.id for e in sent]
    assert dispatcher.stats.delivered == 4


async def test_an_ack_that_fails_leaves_its_batch_pending_for_redelivery() -> None:
    """A failed XACK (Redis gone) is reported like a failed read; the batch is sent again, the backend
    dedupes, and nothing counts as delivered twice."""
    source, backend = RecordingSource(), ScriptedBackend()
    source.fail_acks = 1
    event = make_event()
    source.put(event)
    dispatcher = Dispatcher(source, backend, batch_size=1, flush_interval=0.01, backoff=Waits())
    async with running(dispatcher):
        await until(lambda: source.fail_acks == 0 and bool(source.unacked))

        def redelivered_and_acked() -> bool:  # XAUTOCLAIM, as often as the claim time passes
            source.redeliver_unacked()
            return bool(source.acked)

        await until(redelivered_and_acked)
    assert len(backend.sends) >= 2 and {i for s in backend.sends for i in s} == {event.id}
    assert backend.accepted == [event.id] and source.acked == [source.handed[0].entry_id]
    assert dispatcher.stats.delivered == 1
    assert dispatcher.stats.last_error is not None and "redis is down" in dispatcher.stats.last_error


class FirstSendDoes(ScriptedBackend):
    """Calls ``first`` as its first send starts, then lingers there, so the read-ahead runs meanwhile."""

    def __init__(self, first: Callable[[], None]) -> None:
        super().__init__()
        self.first = first

    async def send(self, batch: list[Event]) -> None:
        if not self.sends:
            self.first()
            await asyncio.sleep(0.05)
        await super().send(batch)


async def test_a_read_ahead_that_fails_is_not_awaited_again_and_reading_recovers() -> None:
    source = RecordingSource()

    def outage() -> None:  # the read-ahead, started with the first send, meets a Redis outage
        source.fail_reads = 1

    backend = FirstSendDoes(outage)
    first, second = events(2)
    source.put(first)
    dispatcher = Dispatcher(source, backend, batch_size=1, flush_interval=0.01, backoff=Waits())
    async with running(dispatcher):
        await until(lambda: bool(source.acked))
        source.put(second)
        await until(lambda: len(source.acked) == 2)
    assert backend.accepted == [first.id, second.id]
    assert dispatcher.stats.last_error is not None and "redis is down" in dispatcher.stats.last_error


async def test_entries_the_read_ahead_claimed_back_from_the_batch_being_sent_are_not_sent_twice() -> None:
    source = RecordingSource()
    backend = FirstSendDoes(
        source.redeliver_unacked
    )  # it outlasts the claim time: XAUTOCLAIM hands it out again
    event = make_event()
    source.put(event)
    await run_until(
        Dispatcher(source, backend, batch_size=1, flush_interval=0.01), lambda: len(source.handed) == 2
    )
    assert backend.sends == [[event.id]]
    assert [d.deliveries for d in source.handed] == [1, 2]


async def test_a_failing_backend_leaves_the_read_ahead_batch_to_redelivery() -> None:
    """Held unacked through the retries, it could be claimed and sent by another consumer as well."""
    source = RecordingSource()

    class FailingOnce(ScriptedBackend):
        async def send(self, batch: list[Event]) -> None:
            await asyncio.sleep(0.02)  # the read-ahead takes the second event meanwhile
            await super().send(batch)

    backend = FailingOnce(transient())
    first, second = events(2)
    source.put(first, second)
    dispatcher = Dispatcher(source, backend, batch_size=1, flush_interval=0.01, backoff=Waits())
    async with running(dispatcher):
        await until(lambda: bool(source.acked))
        await asyncio.sleep(0.1)
        assert backend.accepted == [first.id]  # the second was read ahead, then let go, not sent
        source.redeliver_unacked()
        await until(lambda: len(source.acked) == 2)
    assert backend.accepted == [first.id, second.id]
    assert [d.deliveries for d in source.handed if d.event_id == second.id] == [1, 2]


async def test_a_flush_interval_of_0_sends_each_read_at_once_and_still_stops() -> None:
    source, backend = RecordingSource(), ScriptedBackend()
    source.put(*events(3))
    await run_until(
        Dispatcher(source, backend, batch_size=100, flush_interval=0), lambda: len(source.acked) == 3
    )
    assert [len(b) for b in backend.sends] == [3]


class LineBackend(ScriptedBackend):
    """Takes events as stored lines, like the file backend."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, bytes]] = []

    async def send_lines(self, batch: list[tuple[str, bytes]]) -> None:
        self.lines += batch


async def test_a_line_backend_gets_the_stored_bytes_one_line_each() -> None:
    source, backend = RecordingSource(), LineBackend()
    a, b = events(2)
    pretty = msgspec.json.format(encode_event(b), indent=2)  # an entry spanning lines: made one line
    source.waiting.append(Delivery("9-1", None, pretty, 1))
    source.put(a)
    await run_until(Dispatcher(source, backend, flush_interval=0.01), lambda: len(source.acked) == 2)
    assert backend.lines == [(b.id, encode_event(b)), (a.id, encode_event(a))]
    assert backend.sends == []


async def test_for_a_line_backend_entries_are_only_checked_and_one_that_is_no_event_is_dead_lettered() -> (
    None
):
    source, backend = RecordingSource(), LineBackend()
    good = make_event()
    wrong = msgspec.json.decode(encode_event(make_event())) | {"status": "200"}
    source.put(good)
    source.waiting.append(Delivery("9-1", None, msgspec.json.encode(wrong), 1))
    await run_until(Dispatcher(source, backend, flush_interval=0.01), lambda: bool(source.dead))
    assert backend.lines == [(good.id, encode_event(good))]
    assert [(d.entry_id, error) for d, error in source.dead] == [("9-1", "undecodable event")]
    assert all(d.event is None for d in source.handed)  # checked, never decoded


async def test_a_line_backend_fed_by_the_in_memory_bus_gets_the_events_encoded() -> None:
    source, backend = RecordingSource(), LineBackend()
    event = make_event()
    source.waiting.append(Delivery("1", event, b"", 1, event.id))  # what the in-memory bus hands out
    await run_until(Dispatcher(source, backend, flush_interval=0.01), lambda: bool(source.acked))
    assert backend.lines == [(event.id, encode_event(event))]


async def test_nothing_is_acked_before_the_backend_accepted_the_batch() -> None:
    source, backend = RecordingSource(), GatedBackend()
    gate, entered = backend.gate, backend.entered
    source.put(*events(2))
    stop = asyncio.Event()
    task = asyncio.create_task(Dispatcher(source, backend, flush_interval=0.01).run(stop))
    await asyncio.wait_for(entered.wait(), DEADLINE_S)
    assert source.acked == []
    gate.set()
    async with asyncio.timeout(DEADLINE_S):
        while len(source.acked) < 2:
            await asyncio.sleep(0.005)
    stop.set()
    await asyncio.wait_for(task, DEADLINE_S)
    assert len(source.acked) == 2


async def test_a_transient_failure_retries_the_same_batch_and_delivers_it_once() -> None:
    source, backend, waits = RecordingSource(), ScriptedBackend(transient(), transient()), Waits()
    sent = events(3)
    source.put(*sent)
    dispatcher = Dispatcher(source, backend, flush_interval=0.01, backoff=waits)
    await run_until(dispatcher, lambda: len(source.acked) == 3)
    assert backend.sends == [[e.id for e in sent]] * 3
    assert backend.accepted == [e.id for e in sent]
    assert sorted(source.acked) == sorted(d.entry_id for d in source.handed)
    assert [attempt for attempt, _ in waits.calls] == [1, 2]
    assert dispatcher.stats.retried == 6 and dispatcher.stats.delivered == 3 and dispatcher.stats.failed == 0


async def test_retry_after_from_the_backend_reaches_the_backoff() -> None:
    source, waits = RecordingSource(), Waits()
    source.put(make_event())
    backend = ScriptedBackend(transient(retry_after=7.0))
    await run_until(
        Dispatcher(source, backend, flush_interval=0.01, backoff=waits), lambda: bool(source.acked)
    )
    assert waits.calls == [(1, 7.0)]


async def test_a_network_error_from_a_backend_is_retried_like_a_transient_failure() -> None:
    source, backend = RecordingSource(), ScriptedBackend(ConnectionResetError("reset by peer"))
    source.put(make_event())
    await run_until(
        Dispatcher(source, backend, flush_interval=0.01, backoff=Waits()), lambda: bool(source.acked)
    )
    assert len(backend.sends) == 2 and source.dead == []


async def test_a_permanent_failure_is_dead_lettered_and_not_retried() -> None:
    source, backend = RecordingSource(), ScriptedBackend(permanent())
    [delivery] = source.put(make_event())
    dispatcher = Dispatcher(source, backend, flush_interval=0.01, backoff=Waits())
    await run_until(dispatcher, lambda: bool(source.dead))
    assert len(backend.sends) == 1
    assert source.dead == [(delivery, "HTTP 400: bad")]
    assert source.acked == []
    assert dispatcher.stats.dead_lettered == 1 and dispatcher.stats.last_error == "HTTP 400: bad"


async def test_a_refused_event_is_isolated_and_the_rest_of_its_batch_delivered() -> None:
    sent = events(8)
    bad = sent[5]
    source, backend = RecordingSource(), ScriptedBackend(refuse=lambda e: e.id == bad.id)
    source.put(*sent)
    dispatcher = Dispatcher(source, backend, flush_interval=0.01, backoff=Waits())
    await run_until(dispatcher, lambda: len(source.acked) + len(source.dead) == 8)
    assert [d.event for d, _ in source.dead] == [bad]
    assert sorted(backend.accepted) == sorted(e.id for e in sent if e is not bad)
    assert dispatcher.stats.delivered == 7 and dispatcher.stats.dead_lettered == 1


async def test_a_whole_batch_failure_dead_letters_the_batch_without_splitting_it() -> None:
    source, backend = RecordingSource(), ScriptedBackend(permanent(whole_batch=True))
    source.put(*events(4))
    await run_until(Dispatcher(source, backend, flush_interval=0.01), lambda: len(source.dead) == 4)
    assert len(backend.sends) == 1 and source.acked == []


async def test_an_exception_that_is_a_bug_in_a_backend_is_treated_as_permanent() -> None:
    source, backend = RecordingSource(), ScriptedBackend(KeyError("choices"))
    source.put(make_event())
    await run_until(Dispatcher(source, backend, flush_interval=0.01), lambda: bool(source.dead))
    assert len(backend.sends) == 1
    assert "KeyError" in source.dead[0][1]


async def test_deliveries_beyond_max_deliveries_are_dead_lettered_unsent() -> None:
    source, backend = RecordingSource(), ScriptedBackend()
    [tired] = source.put(make_event(), deliveries=4)
    [fresh] = source.put(make_event(), deliveries=3)
    await run_until(
        Dispatcher(source, backend, flush_interval=0.01, max_deliveries=3), lambda: bool(source.acked)
    )
    assert source.dead == [(tired, "delivered more than 3 times")]
    assert backend.sends == [[fresh.event.id]]  # type: ignore[union-attr]


async def test_undecodable_deliveries_are_dead_lettered_unsent() -> None:
    source, backend = RecordingSource(), ScriptedBackend()
    [broken] = source.put(None)
    [good] = source.put(make_event())
    await run_until(Dispatcher(source, backend, flush_interval=0.01), lambda: bool(source.acked))
    assert source.dead == [(broken, "undecodable event")]
    assert source.acked == [good.entry_id]


@pytest.mark.parametrize("beside", [(), (None,)])  # None: an entry that is not an event, in the same read
async def test_an_event_without_an_id_is_dead_lettered_alone_or_beside_a_bad_entry(
    beside: tuple[None, ...],
) -> None:
    source, backend = RecordingSource(), ScriptedBackend()
    [nameless, *_] = source.put(make_event(id=""), *beside)
    await run_until(
        Dispatcher(source, backend, flush_interval=0.01), lambda: len(source.dead) == 1 + len(beside)
    )
    assert (nameless, "undecodable event") in source.dead
    assert (source.acked, backend.sends) == ([], [])


async def test_after_the_retry_budget_the_batch_is_left_unacked_and_a_redelivery_delivers_it_once() -> None:
    failures = [transient()] * 3
    source, backend = RecordingSource(), ScriptedBackend(*failures)
    sent = make_event()
    source.put(sent)
    dispatcher = Dispatcher(source, backend, flush_interval=0.01, max_attempts=3, backoff=Waits())
    await run_until(dispatcher, lambda: dispatcher.stats.failed == 1)
    assert source.acked == [] and source.dead == [] and len(backend.sends) == 3
    source.redeliver_unacked()  # XAUTOCLAIM after the claim time
    await run_until(dispatcher, lambda: bool(source.acked))
    assert backend.accepted == [sent.id]
    assert source.handed[-1].deliveries == 2


async def test_stop_during_a_backoff_returns_promptly_without_acking() -> None:
    source, backend = RecordingSource(), ScriptedBackend(*[transient()] * 100)
    source.put(make_event())
    dispatcher = Dispatcher(source, backend, flush_interval=0.01, max_attempts=None, backoff=Waits(3600.0))
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    async with asyncio.timeout(DEADLINE_S):
        while not backend.sends:
            await asyncio.sleep(0.005)
    stop.set()
    await asyncio.wait_for(task, DEADLINE_S)  # not after the hour-long backoff
    assert source.acked == [] and len(backend.sends) == 1
    assert dispatcher.stats.failed == 1


async def test_stop_while_idle_returns_promptly() -> None:
    source = RecordingSource()
    stop = asyncio.Event()
    task = asyncio.create_task(Dispatcher(source, ScriptedBackend(), flush_interval=60.0).run(stop))
    async with asyncio.timeout(DEADLINE_S):
        while not source.reads:
            await asyncio.sleep(0.005)
    stop.set()
    await asyncio.wait_for(task, DEADLINE_S)  # reads block at most MAX_BLOCK_S, not flush_interval


async def test_an_unreachable_source_is_retried_until_it_answers() -> None:
    source, backend = RecordingSource(), ScriptedBackend()
    source.fail_reads = 2
    source.put(make_event())
    dispatcher = Dispatcher(source, backend, flush_interval=0.01)
    await run_until(dispatcher, lambda: bool(source.acked))
    assert source.reads >= 3
    assert dispatcher.stats.last_error is not None and "redis is down" in dispatcher.stats.last_error


async def test_entries_collected_before_a_read_failed_are_sent_not_dropped() -> None:
    """Redis dies while a batch is being filled: what was read is sent (if Redis lost it, this is the only
    copy; if not, the backend dedupes its redelivery)."""
    source, backend = RecordingSource(), ScriptedBackend()
    collected = events(3)
    source.put(*collected)
    source.fail_at_read = 2  # the read after the first, still filling the batch
    dispatcher = Dispatcher(source, backend, batch_size=10, flush_interval=30.0)
    await run_until(dispatcher, lambda: len(backend.accepted) == 3)  # without a redelivery
    assert backend.accepted == [e.id for e in collected]
    assert dispatcher.stats.last_error is not None and "redis is down" in dispatcher.stats.last_error


async def test_a_dead_letter_that_fails_keeps_the_good_entries_of_the_same_read() -> None:
    source, backend = RecordingSource(), ScriptedBackend()
    good = events(2)
    source.put(None, *good)  # None: an entry that is no event, to be dead-lettered
    source.fail_dead_letters = 1
    await run_until(Dispatcher(source, backend, flush_interval=0.01), lambda: len(backend.accepted) == 2)
    assert backend.accepted == [e.id for e in good]


@pytest.mark.parametrize("redelivers", [True, False])
async def test_a_read_in_flight_at_stop_is_finished_and_what_it_returns_sent(redelivers: bool) -> None:
    """Entries the server wrote just before it stopped its workers are sent; and a list (BRPOP) or in-memory
    read removes what it returns, so cancelling one could lose an entry."""
    source, backend = RecordingSource(), ScriptedBackend()
    source.redelivers = redelivers  # type: ignore[misc]
    stop = asyncio.Event()
    task = asyncio.create_task(Dispatcher(source, backend, flush_interval=60.0).run(stop))
    await until(lambda: source.reads > 0)
    stop.set()
    event = make_event()
    source.put(event)  # answers the read in flight
    await asyncio.wait_for(task, DEADLINE_S)
    assert backend.accepted == [event.id]


async def test_lag_is_the_sources() -> None:
    source = RecordingSource()
    source.put(*events(2))
    assert await Dispatcher(source, ScriptedBackend()).lag() == {"length": 2, "pending": 0}


@pytest.mark.parametrize("batch_size", [1, 7])
async def test_every_event_is_delivered_exactly_once_whatever_the_batch_size(batch_size: int) -> None:
    source, backend = RecordingSource(), ScriptedBackend(transient(), None, transient())
    sent = events(20)
    source.put(*sent)
    dispatcher = Dispatcher(source, backend, batch_size=batch_size, flush_interval=0.01, backoff=Waits())
    await run_until(dispatcher, lambda: len(source.acked) == 20)
    assert sorted(backend.accepted) == sorted(e.id for e in sent)
    assert len(source.acked) == len(set(source.acked)) == 20
