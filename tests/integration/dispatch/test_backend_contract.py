"""Every backend against its real peer: the JSONL file, the fake Lunary and the fake Helicone on loopback.

The fakes validate like the real servers (tests/fakes); `violations` must stay empty. Through the
Dispatcher: a 500-then-200 delivers each event exactly once, a 400 dead-letters, a 429 waits for
its Retry-After.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmproxy.dispatch.backends.base import Backend
from llmproxy.dispatch.backends.file import FileBackend
from llmproxy.dispatch.backends.helicone import HeliconeBackend
from llmproxy.dispatch.backends.lunary import LunaryBackend
from llmproxy.dispatch.transform import run_uuid
from llmproxy.events.model import Event, decode_event
from tests.fakes.helicone import FakeHelicone
from tests.fakes.lunary import FakeLunary
from tests.unit.dispatch.doubles import (
    RecordingSource,
    Waits,
    chat_event,
    dispatch_until,
    rate_limited_event,
    stream_event,
)


@dataclass
class Destination:
    """A backend and a way to see, on its peer, which events arrived and how often."""

    backend: Backend
    arrivals: Callable[[], Counter[str]]  # run id -> times stored
    violations: Callable[[], list[str]] = lambda: []
    inject: Callable[..., None] = lambda *faults: None
    requests: Callable[[], int] = lambda: 0


def file_destination(path: Path) -> Destination:
    def arrivals() -> Counter[str]:
        if not path.exists():
            return Counter()
        return Counter(run_uuid(decode_event(line)) for line in path.read_bytes().splitlines())

    return Destination(FileBackend(path), arrivals)


def lunary_destination(fake: FakeLunary) -> Destination:
    def arrivals() -> Counter[str]:
        return Counter(run_id for run_id, run in fake.runs.items() if run["status"] != "started")

    backend = LunaryBackend(fake.url, fake.api_key)
    return Destination(backend, arrivals, lambda: fake.violations, fake.inject, lambda: len(fake.requests))


def helicone_destination(fake: FakeHelicone) -> Destination:
    def arrivals() -> Counter[str]:
        return Counter(fake.logged_ids())

    backend = HeliconeBackend(fake.url, fake.api_key)
    return Destination(backend, arrivals, lambda: fake.violations, fake.inject, lambda: len(fake.requests))


@pytest.fixture(params=["file", "lunary", "helicone"])
async def destination(
    request: pytest.FixtureRequest, tmp_path: Path, fake_lunary: FakeLunary, fake_helicone: FakeHelicone
) -> AsyncIterator[Destination]:
    make = {
        "file": lambda: file_destination(tmp_path / "events.jsonl"),
        "lunary": lambda: lunary_destination(fake_lunary),
        "helicone": lambda: helicone_destination(fake_helicone),
    }[request.param]
    dest = make()
    yield dest
    await dest.backend.aclose()


@pytest.fixture(params=["lunary", "helicone"])
async def http_destination(
    request: pytest.FixtureRequest, fake_lunary: FakeLunary, fake_helicone: FakeHelicone
) -> AsyncIterator[Destination]:
    dest = (
        lunary_destination(fake_lunary) if request.param == "lunary" else helicone_destination(fake_helicone)
    )
    yield dest
    await dest.backend.aclose()


def three_calls() -> list[Event]:
    return [chat_event(), stream_event(), rate_limited_event()]


async def test_a_chat_a_stream_and_an_upstream_error_each_arrive_once(destination: Destination) -> None:
    batch = three_calls()
    await destination.backend.send(batch)
    assert destination.arrivals() == Counter({run_uuid(e): 1 for e in batch})
    assert destination.violations() == []


async def test_sending_a_batch_again_stores_nothing_twice(destination: Destination) -> None:
    batch = three_calls()
    await destination.backend.send(batch[:2])
    await destination.backend.send(batch)  # a redelivery overlapping what was stored
    assert destination.arrivals() == Counter({run_uuid(e): 1 for e in batch})
    assert destination.violations() == []


async def test_the_dispatcher_delivers_every_event_exactly_once_to_each_backend(
    destination: Destination,
) -> None:
    source = RecordingSource()
    batch = [chat_event() for _ in range(5)] + [stream_event() for _ in range(5)]
    source.put(*batch)
    await dispatch_until(source, destination.backend, lambda: len(source.acked) == 10, batch_size=4)
    assert destination.arrivals() == Counter({run_uuid(e): 1 for e in batch})
    assert destination.violations() == []


async def test_a_500_then_a_200_delivers_each_event_exactly_once(http_destination: Destination) -> None:
    dest, source = http_destination, RecordingSource()
    batch = three_calls()
    source.put(*batch)
    dest.inject({"status": 500, "body": "boom"}, {"status": 502}, {"drop_connection": True})
    dispatcher = await dispatch_until(source, dest.backend, lambda: len(source.acked) == 3)
    assert dest.arrivals() == Counter({run_uuid(e): 1 for e in batch})
    assert source.dead == [] and dispatcher.stats.retried > 0
    assert dest.violations() == []


async def test_a_400_is_dead_lettered_and_not_retried(http_destination: Destination) -> None:
    dest, source = http_destination, RecordingSource()
    [delivery] = source.put(chat_event())
    dest.inject({"status": 400, "body": '{"error":"Invalid providerRequest"}'})
    await dispatch_until(source, dest.backend, lambda: bool(source.dead))
    assert dest.requests() == 1
    assert source.dead[0][0] == delivery and "HTTP 400" in source.dead[0][1]
    assert source.acked == [] and dest.arrivals() == Counter()


async def test_a_429_waits_at_least_its_retry_after(http_destination: Destination) -> None:
    dest, source, waits = http_destination, RecordingSource(), Waits()
    event = chat_event()
    source.put(event)
    dest.inject(
        {"status": 429, "headers": {"Retry-After": "3", "Rate-Limit-Remaining": "0"}, "body": "slow down"}
    )
    await dispatch_until(source, dest.backend, lambda: bool(source.acked), backoff=waits)
    assert waits.calls == [(1, 3.0)]
    assert dest.arrivals() == Counter({run_uuid(event): 1})


async def test_a_wrong_key_dead_letters_the_batch_without_splitting_it(
    fake_lunary: FakeLunary, fake_helicone: FakeHelicone
) -> None:
    for backend, fake in (
        (LunaryBackend(fake_lunary.url, "0b6a1e2c-3d4e-4f5a-8b9c-0d1e2f3a4b5c"), fake_lunary),
        (HeliconeBackend(fake_helicone.url, "sk-helicone-wrong", concurrency=1), fake_helicone),
    ):
        source = RecordingSource()
        source.put(*three_calls())
        await dispatch_until(source, backend, lambda: len(source.dead) == 3)  # noqa: B023
        await backend.aclose()
        assert source.acked == []
        assert "HTTP 401" in source.dead[0][1]
        assert len(fake.requests) == 1  # helicone: the first 401 stops the batch
