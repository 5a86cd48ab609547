"""Test doubles and sample events for the dispatch tests (unit and integration import them).

`RecordingSource` behaves like a Redis Streams source as the dispatcher sees it: reads hand out
deliveries, ack/dead_letter are recorded, and `redeliver_unacked()` plays XAUTOCLAIM (deliveries+1).
The sample events carry real OpenAI request/response bodies (research/backends.md §4).
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Callable
from typing import Any

from llmproxy.dispatch.backends.base import Backend, DeliveryError
from llmproxy.dispatch.dispatcher import Dispatcher
from llmproxy.events.bus import Delivery
from llmproxy.events.model import Event, Usage, decode_event, encode_event

DEADLINE_S = 10.0
STARTED_AT = "2026-01-01T12:00:00.250000Z"
STARTED_EPOCH = 1767268800.25

CHAT_REQUEST: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    "temperature": 0.2,
    "max_tokens": 100,
    "user": "user-123",
}
CHAT_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-abc",
    "object": "chat.completion",
    "created": 1767268801,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 9,
        "total_tokens": 21,
        "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
    },
}


def _chunk(
    delta: dict[str, Any], finish: str | None = None, usage: Any = None, choices: bool = True
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-str",
        "object": "chat.completion.chunk",
        "created": 1767268801,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        if choices
        else [],
        "usage": usage,
    }


STREAM_REQUEST: dict[str, Any] = {
    **CHAT_REQUEST,
    "stream": True,
    "stream_options": {"include_usage": True},
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
}
STREAM_CHUNKS: list[dict[str, Any]] = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Let me "}),
    _chunk({"content": "check."}),
    _chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        }
    ),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    _chunk({}, finish="tool_calls"),
    _chunk({}, usage={"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}, choices=False),
]
RATE_LIMITED_BODY: dict[str, Any] = {
    "error": {
        "message": "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}


def sse(chunks: list[Any], *, done: bool = True, space: bool = True) -> str:
    prefix = "data: " if space else "data:"
    text = "".join(f"{prefix}{json.dumps(c)}\n\n" for c in chunks)
    return text + (f"{prefix}[DONE]\n\n" if done else "")


def make_event(**fields: Any) -> Event:
    values: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "request_id": "req-" + uuid.uuid4().hex[:8],
        "project_id": "proj-1",
        "token_id": "tok-1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "started_at": STARTED_AT,
        "duration_ms": 1234.0,
        "ttfb_ms": 180.4,
        "model": "gpt-4o-mini",
        "usage": Usage(prompt_tokens=12, completion_tokens=9, total_tokens=21),
        "usage_source": "response",
        "request_headers": {"content-type": "application/json", "authorization": "[redacted]"},
        "response_headers": {"Content-Type": "application/json", "x-request-id": "req_upstream_1"},
        "request_body": json.dumps(CHAT_REQUEST),
        "response_body": json.dumps(CHAT_RESPONSE),
    }
    values.update(fields)
    return Event(**values)


def chat_event(**fields: Any) -> Event:
    return make_event(**fields)


def stream_event(**fields: Any) -> Event:
    values: dict[str, Any] = {
        "stream": True,
        "usage": Usage(prompt_tokens=20, completion_tokens=7, total_tokens=27),
        "response_headers": {"content-type": "text/event-stream", "x-request-id": "req_upstream_2"},
        "request_body": json.dumps(STREAM_REQUEST),
        "response_body": sse(STREAM_CHUNKS),
    }
    values.update(fields)
    return make_event(**values)


def rate_limited_event(**fields: Any) -> Event:
    values: dict[str, Any] = {
        "status": 429,
        "usage": None,
        "usage_source": None,
        "response_headers": {
            "content-type": "application/json",
            "retry-after": "20",
            "x-request-id": "req_upstream_3",
        },
        "response_body": json.dumps(RATE_LIMITED_BODY),
    }
    values.update(fields)
    return make_event(**values)


def base64_event(event: Event) -> Event:
    """The same event with both bodies base64-encoded, as the proxy stores non-UTF-8 bodies."""
    b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    return Event(
        **{
            **{f: getattr(event, f) for f in event.__struct_fields__},
            "request_body": b64(event.request_body),
            "response_body": b64(event.response_body),
            "body_encoding": "base64",
        }
    )


class RecordingSource:
    """An EventSource double: hands out what was `put` as Redis does (stored bytes, not decoded), records
    acks and dead letters."""

    redelivers = True  # redeliver_unacked() plays XAUTOCLAIM

    def __init__(self) -> None:
        self.waiting: list[Delivery] = []
        self.unacked: dict[str, Delivery] = {}
        self.acked: list[str] = []
        self.dead: list[tuple[Delivery, str]] = []
        self.reads = 0
        self.handed: list[Delivery] = []
        self._arrived = asyncio.Event()
        self._sequence = 0
        self.fail_reads = 0  # the next N reads raise, like an unreachable Redis
        self.fail_acks = 0  # the next N acks raise, likewise
        self.fail_dead_letters = 0  # the next N dead letters raise, likewise
        self.fail_at_read = 0  # the read with this number (1: the first) raises: Redis dies mid-batch

    def put(self, *events: Event | None, deliveries: int = 1) -> list[Delivery]:
        added = []
        for event in events:
            self._sequence += 1
            raw = b"{not json" if event is None else encode_event(event)  # None: an entry that is no event
            added.append(Delivery(f"0-{self._sequence}", None, raw, deliveries))
        self.waiting += added
        self._arrived.set()
        return added

    def redeliver_unacked(self) -> None:
        """What XAUTOCLAIM does for idle pending entries: hand them out again, counted."""
        again = [Delivery(d.entry_id, None, d.raw, d.deliveries + 1) for d in self.unacked.values()]
        self.unacked.clear()
        self.waiting += again
        self._arrived.set()

    def acked_events(self) -> list[Event]:
        acked = set(self.acked)
        return [decode_event(d.raw) for d in self.handed if d.entry_id in acked]

    async def start(self) -> None:
        return None

    async def read(self, max_count: int, block_s: float) -> list[Delivery]:
        self.reads += 1
        if self.fail_reads or self.reads == self.fail_at_read:
            self.fail_reads = max(0, self.fail_reads - 1)
            raise ConnectionError("redis is down")
        if not self.waiting and block_s > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), block_s)
            except TimeoutError:
                return []
        batch, self.waiting = self.waiting[:max_count], self.waiting[max_count:]
        for d in batch:
            self.unacked[d.entry_id] = d
        self.handed.extend(batch)
        return batch

    async def ack(self, entry_ids: list[str]) -> None:
        if self.fail_acks:
            self.fail_acks -= 1
            raise ConnectionError("redis is down")
        self.acked += entry_ids
        for entry_id in entry_ids:
            self.unacked.pop(entry_id, None)

    async def dead_letter(self, deliveries: list[Delivery], error: str) -> None:
        if self.fail_dead_letters:
            self.fail_dead_letters -= 1
            raise ConnectionError("redis is down")
        for d in deliveries:
            self.dead.append((d, error))
            self.unacked.pop(d.entry_id, None)

    async def lag(self) -> dict[str, int]:
        return {"length": len(self.waiting), "pending": len(self.unacked)}

    async def aclose(self) -> None:
        return None


class ScriptedBackend:
    """A Backend double: raises the scripted errors in turn, then accepts; records every send."""

    name = "scripted"

    def __init__(self, *script: BaseException | None, refuse: Callable[[Event], bool] | None = None) -> None:
        self.script = list(script)
        self.refuse = refuse  # events it always refuses permanently (isolation tests)
        self.sends: list[list[str]] = []
        self.accepted: list[str] = []
        self.closed = False

    async def send(self, batch: list[Event]) -> None:
        self.sends.append([e.id for e in batch])
        if self.script:
            error = self.script.pop(0)
            if error is not None:
                raise error
        if self.refuse is not None and any(self.refuse(e) for e in batch):
            raise DeliveryError("refused: bad event", transient=False)
        self.accepted += [e.id for e in batch if e.id not in self.accepted]

    async def aclose(self) -> None:
        self.closed = True


class GatedBackend(ScriptedBackend):
    """Holds every send at ``gate`` (``entered`` is set once a send is waiting there)."""

    def __init__(self, *script: BaseException | None) -> None:
        super().__init__(*script)
        self.gate, self.entered = asyncio.Event(), asyncio.Event()

    async def send(self, batch: list[Event]) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().send(batch)


class Waits:
    """A backoff double for the Dispatcher: records (attempt, retry_after), waits `seconds`."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.calls: list[tuple[int, float | None]] = []
        self.seconds = seconds

    def __call__(self, attempt: int, retry_after: float | None) -> float:
        self.calls.append((attempt, retry_after))
        return self.seconds


async def dispatch_until(
    source: RecordingSource, backend: Backend, done: Callable[[], bool], **options: Any
) -> Dispatcher:
    """Run a Dispatcher (no real backoff waits) until `done()` holds, polled with a deadline; stop it."""
    dispatcher = Dispatcher(source, backend, **{"flush_interval": 0.01, "backoff": Waits(), **options})
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        async with asyncio.timeout(DEADLINE_S):
            while not done():
                await asyncio.sleep(0.005)
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)
    return dispatcher
