"""A finished exchange becomes the SPEC §6 Event: redacted, decoded, bounded, with model and usage."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import uuid
import zlib
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from llmproxy.auth.authority import Grant
from llmproxy.config import EventSettings
from llmproxy.errors import Outcome
from llmproxy.events.model import Event, Usage, encode_event
from llmproxy.proxy.flow import Flow
from llmproxy.proxy.instrument import (
    HOLD_MAX,
    Instrumentation,
    build_event,
    decode_body,
    rfc3339,
)
from llmproxy.redact import redact_query

SECRET_TOKEN = "sk-withering0123456789abcdefghijklmnop"
SECRET_KEY = "sk-proj-UPSTREAMKEY0123456789abcdefghij"
CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello, world!"}]}'
ANSWER = b'{"id":"chatcmpl-1","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hi!"}}],"usage":{"prompt_tokens":11,"completion_tokens":2,"total_tokens":13}}'
STARTED = datetime(2026, 11, 23, 9, 1, 37, 500000, tzinfo=UTC).timestamp()


class RecordingBus:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)


class BrokenBus:
    def publish(self, event: Event) -> None:
        raise RuntimeError("bus down")


def make_flow(**changes: Any) -> Flow:
    """A settled Flow of a chat completion; ``changes`` set any of its fields (``error`` by its name)."""
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "token_id": "tok-1",
        "project_id": "proj-1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "query": "",
        "status": 200,
        "started_at": STARTED,
        "duration_ms": 812.44,
        "ttfb_ms": 95.06,
        "request_headers": {"Content-Type": "application/json"},
        "response_headers": {"Content-Type": "application/json"},
        "request_body": CHAT,
        "request_body_truncated": False,
        "response_body": ANSWER,
        "response_body_truncated": False,
        "stream": False,
        "error": None,
    } | changes
    grant = Grant(
        token_id=fields.pop("token_id"),
        project_id=fields.pop("project_id"),
        api_key=SECRET_KEY,
        upstream_base_url=None,
        max_requests=None,
        rate_limit_per_minute=None,
    )
    flow = Flow(
        request_id=fields.pop("request_id"),
        method=fields.pop("method"),
        path=fields.pop("path"),
        query=fields.pop("query"),
        grant=grant,
        request_headers=fields.pop("request_headers"),
        started_at=fields.pop("started_at"),
        arrived=0.0,
    )
    error = fields.pop("error")
    flow.outcome = next(o for o in Outcome if o.error == error)
    for name, value in fields.items():
        setattr(flow, name, value)
    return flow


def event_of(ex: Flow, settings: EventSettings | None = None) -> Event:
    return build_event(ex, settings or EventSettings())[0]


# --- headers -------------------------------------------------------------------------------------


def test_encoded_event_is_exactly_the_spec_shape_and_holds_no_secret() -> None:
    bus = RecordingBus()
    Instrumentation(bus, EventSettings())(
        make_flow(
            query="api-version=1",
            request_headers={"Authorization": f"Bearer {SECRET_TOKEN}", "Content-Type": "application/json"},
            response_headers={
                "Content-Type": "application/json",
                "Set-Cookie": "__cf=1",
                "X-Request-ID": "req_up",
            },
        )
    )
    [event] = bus.events
    encoded = encode_event(event)
    assert SECRET_TOKEN.encode() not in encoded and b"__cf" not in encoded
    assert uuid.UUID(event.id).version == 4
    answer = json.dumps(ANSWER.decode())
    chat = json.dumps(CHAT.decode())
    assert (
        encoded
        == (
            f'{{"id":"{event.id}","request_id":"req-1","project_id":"proj-1","token_id":"tok-1","method":"POST",'
            '"path":"/v1/chat/completions","query":"api-version=1","status":200,'
            '"started_at":"2026-11-23T09:01:37.500000Z","duration_ms":812.4,"ttfb_ms":95.1,"stream":false,'
            '"model":"gpt-4o-mini","usage":{"prompt_tokens":11,"completion_tokens":2,"total_tokens":13},'
            '"usage_source":"response",'
            '"request_headers":{"authorization":"[REDACTED]","content-type":"application/json"},'
            '"response_headers":{"content-type":"application/json","set-cookie":"[REDACTED]","x-request-id":"req_up"},'
            f'"request_body":{chat},"request_body_truncated":false,'
            f'"response_body":{answer},"response_body_truncated":false,"body_encoding":"utf-8","error":null,'
            '"metadata":null}'
        ).encode()
    )


def test_the_tokens_metadata_is_copied_into_its_events() -> None:
    flow = make_flow()
    flow.grant = msgspec.structs.replace(flow.grant, metadata={"team": "search", "tier": 2})
    assert event_of(flow).metadata == {"team": "search", "tier": 2}


def test_every_event_gets_its_own_id() -> None:
    assert event_of(make_flow()).id != event_of(make_flow()).id


# --- bodies --------------------------------------------------------------------------------------


def test_gzip_response_is_decoded_for_the_event() -> None:
    event = event_of(
        make_flow(response_headers={"Content-Encoding": "gzip"}, response_body=gzip.compress(ANSWER))
    )
    assert (event.response_body, event.body_encoding, event.response_body_truncated) == (
        ANSWER.decode(),
        "utf-8",
        False,
    )
    assert event.usage == Usage(11, 2, 13)


@pytest.mark.parametrize("wrap", [zlib.compress, lambda b: zlib.compress(b)[2:-4]], ids=["zlib", "raw"])
def test_deflate_response_is_decoded_whether_zlib_wrapped_or_raw(wrap: Any) -> None:
    event = event_of(make_flow(response_headers={"content-encoding": "deflate"}, response_body=wrap(ANSWER)))
    assert event.response_body == ANSWER.decode()


def test_decompression_never_expands_past_the_body_limit() -> None:
    bomb = gzip.compress(b"a" * 5_000_000)
    assert len(bomb) < 10_000
    settings = EventSettings(max_response_body_bytes=1000)
    event = event_of(make_flow(response_headers={"Content-Encoding": "gzip"}, response_body=bomb), settings)
    assert (event.response_body, event.response_body_truncated) == ("a" * 1000, True)


def test_a_body_that_fits_the_limit_exactly_is_not_truncated() -> None:
    assert decode_body(gzip.compress(b"x" * 64), "gzip", 64, False) == (b"x" * 64, False)


def test_a_cut_gzip_body_decodes_as_far_as_it_goes() -> None:
    packed = gzip.compress(b"0123456789" * 1000, compresslevel=1)
    plain, truncated = decode_body(packed[: len(packed) // 2], "gzip", 1 << 20, True)
    assert truncated and plain and (b"0123456789" * 1000).startswith(plain)


def test_corrupt_or_stacked_encodings_are_kept_as_captured() -> None:
    assert decode_body(b"\x1f\x8bnot gzip", "gzip", 100, False) == (b"\x1f\x8bnot gzip", False)
    assert decode_body(b"abc", "gzip, br", 100, False) == (b"abc", False)
    assert decode_body(b"abc", "identity", 100, False) == (b"abc", False)


def test_binary_bodies_switch_both_bodies_to_base64() -> None:
    audio = bytes(range(256))
    event = event_of(
        make_flow(
            path="/v1/audio/speech", response_headers={"Content-Type": "audio/mpeg"}, response_body=audio
        )
    )
    assert event.body_encoding == "base64"
    assert base64.b64decode(event.response_body) == audio
    assert base64.b64decode(event.request_body) == CHAT
    assert event.usage is None


def test_a_character_cut_by_the_capture_bound_keeps_the_body_text() -> None:
    cut = "Grüße 🚀".encode()[:-2]
    event = event_of(make_flow(response_body=cut, response_body_truncated=True))
    assert (event.response_body, event.body_encoding, event.response_body_truncated) == (
        "Grüße ",
        "utf-8",
        True,
    )


def test_invalid_utf8_inside_a_whole_body_is_base64() -> None:
    event = event_of(make_flow(response_body=b"caf\xe9 au lait"))
    assert event.body_encoding == "base64" and base64.b64decode(event.response_body) == b"caf\xe9 au lait"


def test_truncation_flags_and_error_are_carried() -> None:
    event = event_of(
        make_flow(request_body_truncated=True, response_body=b"", status=504, error="upstream_timeout")
    )
    assert (event.request_body_truncated, event.response_body_truncated) == (True, False)
    assert (event.status, event.error, event.usage, event.usage_source) == (
        504,
        "upstream_timeout",
        None,
        None,
    )


# --- model ---------------------------------------------------------------------------------------


def test_model_falls_back_to_the_response() -> None:
    event = event_of(
        make_flow(
            method="GET",
            path="/v1/models/gpt-4o",
            request_body=b"",
            response_body=b'{"id":"gpt-4o","model":"gpt-4o"}',
        )
    )
    assert event.model == "gpt-4o"
    assert event_of(make_flow(request_body=b"", response_body=b"{}")).model is None


# --- usage ---------------------------------------------------------------------------------------


def sse(*chunks: object) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def delta(text: str) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }


STREAM_REQUEST = b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Hello, world!"}]}'
FOX_DELTAS = [delta(t) for t in ("The quick", " brown fox", " jumps over the", " lazy dog.")]


def stream_flow(body: bytes) -> Flow:
    return make_flow(
        request_body=STREAM_REQUEST,
        response_body=body,
        stream=True,
        response_headers={"Content-Type": "text/event-stream"},
    )


def test_stream_usage_comes_from_the_usage_chunk_and_the_body_is_the_sse_text() -> None:
    body = sse(
        *FOX_DELTAS,
        {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 10, "total_tokens": 21}},
    )
    event, estimate = build_event(stream_flow(body), EventSettings())
    assert (event.usage, event.usage_source, estimate) == (Usage(11, 10, 21), "response", None)
    assert (event.stream, event.response_body, event.model) == (True, body.decode(), "gpt-4o")


async def test_stream_without_usage_is_published_with_estimated_counts() -> None:
    bus = RecordingBus()
    instrumentation = Instrumentation(bus, EventSettings())
    instrumentation(stream_flow(sse(*FOX_DELTAS)))
    await instrumentation.aclose()
    [event] = bus.events
    assert (event.usage, event.usage_source) == (Usage(11, 10, 21), "estimated")
    assert instrumentation.stats() == {"failures": 0, "estimated": 1, "unestimated": 0, "estimating": 0}


def test_non_stream_response_without_usage_is_estimated_even_outside_a_loop() -> None:
    bus = RecordingBus()
    answer = b'{"choices":[{"index":0,"message":{"role":"assistant","content":"The quick brown fox jumps over the lazy dog."}}]}'
    Instrumentation(bus, EventSettings())(make_flow(request_body=STREAM_REQUEST, response_body=answer))
    assert (bus.events[0].usage, bus.events[0].usage_source) == (Usage(11, 10, 21), "estimated")


async def test_a_full_estimation_backlog_publishes_without_usage() -> None:
    bus = RecordingBus()
    instrumentation = Instrumentation(bus, EventSettings(buffer_size=0))
    instrumentation(stream_flow(sse(*FOX_DELTAS)))
    await instrumentation.aclose()
    assert [(e.usage, e.usage_source) for e in bus.events] == [(None, None)]
    assert instrumentation.unestimated == 1


@pytest.mark.parametrize(
    "changes", [{"status": 400}, {"error": "client_disconnected"}, {"path": "/v1/models", "method": "GET"}]
)
def test_failed_or_non_generating_exchanges_are_not_estimated(changes: dict[str, Any]) -> None:
    event, estimate = build_event(
        make_flow(response_body=b'{"error":{"message":"nope"}}', **changes), EventSettings()
    )
    assert (event.usage, estimate) == (None, None)


# --- building in passes ----------------------------------------------------------------------------


async def test_exchanges_finishing_together_are_published_together_after_the_hold_in_order() -> None:
    bus = RecordingBus()
    instrumentation = Instrumentation(bus, EventSettings())
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    call_later = loop.call_later
    loop.call_later = lambda delay, *args: timers.append(delay) or call_later(delay, *args)  # type: ignore[method-assign]
    try:
        for n in range(3):
            instrumentation(make_flow(request_id=f"req-{n}"))
    finally:
        del loop.call_later  # type: ignore[method-assign]
    assert bus.events == []  # held: the request that finished does not pay for its event
    assert timers == [0.002]  # one 2 ms hold for all three (README)

    await asyncio.sleep(0.05)

    assert [e.request_id for e in bus.events] == ["req-0", "req-1", "req-2"]
    await instrumentation.aclose()


async def test_a_full_hold_is_built_at_once() -> None:
    bus = RecordingBus()
    instrumentation = Instrumentation(bus, EventSettings())
    for n in range(65):
        instrumentation(make_flow(request_id=f"req-{n}"))

    assert len(bus.events) == HOLD_MAX == 64  # built at the 64th (README)
    await instrumentation.aclose()
    assert len(bus.events) == 65


async def test_closing_publishes_what_is_held_at_once() -> None:
    bus = RecordingBus()
    instrumentation = Instrumentation(bus, EventSettings())
    instrumentation(make_flow())

    await instrumentation.aclose()

    assert [e.request_id for e in bus.events] == ["req-1"]


def test_what_a_loop_that_ended_left_held_is_built_with_the_next_exchange() -> None:
    bus = RecordingBus()
    instrumentation = Instrumentation(bus, EventSettings())

    async def finish_one(wait: float) -> None:
        instrumentation(make_flow(request_id=f"held-{wait}"))
        await asyncio.sleep(wait)

    asyncio.run(finish_one(0.0))  # the loop ends inside the hold: its timer never fires
    assert bus.events == []
    asyncio.run(finish_one(0.05))  # a new loop: what is held gets a timer on it
    assert [e.request_id for e in bus.events] == ["held-0.0", "held-0.05"]

    asyncio.run(finish_one(0.0))
    instrumentation(make_flow(request_id="outside"))  # outside a loop: everything held is built now

    assert [e.request_id for e in bus.events][2:] == ["held-0.0", "outside"]


async def test_after_close_an_exchange_is_published_at_once_without_estimation() -> None:
    bus = RecordingBus()
    instrumentation = Instrumentation(bus, EventSettings())
    await instrumentation.aclose()

    instrumentation(stream_flow(sse(*FOX_DELTAS)))  # no usage: would go to the counting thread

    assert [(e.usage, e.usage_source) for e in bus.events] == [(None, None)]
    assert instrumentation.stats()["estimating"] == 0


# --- never raising -------------------------------------------------------------------------------


def test_a_bus_failure_is_counted_not_raised() -> None:
    instrumentation = Instrumentation(BrokenBus(), EventSettings())
    instrumentation(make_flow())
    assert instrumentation.failures == 1


@pytest.mark.parametrize(
    "timestamp",
    [
        1767268800.25,
        1767268800.0,
        1767268800.9999996,  # rounds up into the next second
        1767268800.0000005,  # half a microsecond: rounded as datetime rounds it
        1767268801.0000015,
        0.0,
        1700000008.7486315,
        2e9 + 0.123456,
    ],
)
def test_started_at_is_formatted_exactly_as_datetime_would(timestamp: float) -> None:
    for _ in range(2):  # the second is cached after the first call: both must agree
        assert rfc3339(timestamp) == datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- credentials in the query string ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "redacted"),
    [
        ("", ""),
        ("api-version=2024-06-01&trace=1", "api-version=2024-06-01&trace=1"),
        ("api_key=sk-abcdefgh12345&x=1", "api_key=[REDACTED]&x=1"),
        (
            "key=AIzaSy0&token=t&access_token=a&apiKey=k&api-key=k",
            "key=[REDACTED]&token=[REDACTED]&access_token=[REDACTED]&apiKey=[REDACTED]&api-key=[REDACTED]",
        ),
        (
            "client_secret=s&password=p&sig=abc&X-Amz-Signature=f&jwt=e",
            "client_secret=[REDACTED]"
            "&password=[REDACTED]&sig=[REDACTED]&X-Amz-Signature=[REDACTED]&jwt=[REDACTED]",
        ),
        ("note=Bearer%20abc&q=basic+dXNlcg&v=sk-proj-abcdefgh1", "note=[REDACTED]&q=[REDACTED]&v=[REDACTED]"),
        ("API%5FKEY=x&a=b", "API%5FKEY=[REDACTED]&a=b"),  # names are compared decoded and folded
        ("sk-abcdefgh12345&&flag&token", "[REDACTED]&&flag&token"),  # bare parts: only a secret value
        ("max_tokens=5&monkey=1&author=me", "max_tokens=5&monkey=[REDACTED]&author=me"),
        ("token=a=b=c&x=%ZZ", "token=[REDACTED]&x=%ZZ"),
    ],
)
def test_credentials_in_the_query_are_redacted_and_the_rest_kept_byte_for_byte(
    query: str, redacted: str
) -> None:
    assert redact_query(query) == redacted
    assert event_of(make_flow(query=query)).query == redacted


# --- responses past the capture bound, bodies nested too deeply ------------------------------------

BIG_ANSWER = (
    b'{"id":"chatcmpl-1","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"'
    + b"word " * 60_000
    + b'"}}],"usage":{"prompt_tokens":3,"completion_tokens":60000,"total_tokens":60003},"system_fingerprint":"fp"}'
)


def cut(body: bytes, limit: int, tail: int = 16384) -> dict[str, Any]:
    return {"response_body": body[:limit], "response_body_truncated": True, "response_tail": body[-tail:]}


def test_the_usage_of_a_response_past_the_bound_is_read_from_its_tail() -> None:
    event, estimate = build_event(
        make_flow(**cut(BIG_ANSWER, 1000)), EventSettings(max_response_body_bytes=1000)
    )
    assert (event.usage, event.usage_source, estimate) == (Usage(3, 60000, 60003), "response", None)
    assert (len(event.response_body), event.response_body_truncated) == (1000, True)


def test_a_response_past_the_bound_whose_tail_has_no_usage_is_estimated() -> None:
    answer = BIG_ANSWER.replace(b'"usage"', b'"other"')
    event, estimate = build_event(make_flow(**cut(answer, 1000)), EventSettings(max_response_body_bytes=1000))
    assert event.usage is None and estimate is not None


async def test_a_compressed_response_decoding_past_the_bound_gets_its_usage_off_the_loop() -> None:
    bus = RecordingBus()
    instrumentation = Instrumentation(bus, EventSettings(max_response_body_bytes=1000))
    packed = gzip.compress(BIG_ANSWER)
    instrumentation(make_flow(response_headers={"Content-Encoding": "gzip"}, response_body=packed))
    await instrumentation.aclose()
    [event] = bus.events
    assert (event.usage, event.usage_source) == (Usage(3, 60000, 60003), "response")
    assert (len(event.response_body), event.response_body_truncated) == (1000, True)
    assert instrumentation.stats() == {"failures": 0, "estimated": 0, "unestimated": 0, "estimating": 0}


async def test_a_compressed_response_past_the_bound_without_usage_is_estimated_from_its_head() -> None:
    bus = RecordingBus()
    instrumentation = Instrumentation(bus, EventSettings(max_response_body_bytes=1000))
    packed = gzip.compress(BIG_ANSWER.replace(b'"usage"', b'"other"'))
    instrumentation(make_flow(response_headers={"Content-Encoding": "gzip"}, response_body=packed))
    await instrumentation.aclose()
    [event] = bus.events
    assert event.usage_source == "estimated" and instrumentation.estimated == 1


DEEP = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize(
    "changes",
    [
        {"request_body": b'{"model":"gpt-4o","x":' + DEEP + b"}"},
        {"request_body": b'{"x":' + DEEP + b',"model":"gpt-4o"}', "request_body_truncated": True},
        {"response_body": b'{"x":' + DEEP + b',"model":"gpt-4o","usage":{"prompt_tokens":1}}'},
        {"response_body": b'data: {"usage":null,"x":' + DEEP + b"}\n\n", "stream": True},
    ],
)
async def test_a_deeply_nested_body_still_makes_exactly_one_event(changes: dict[str, Any]) -> None:
    bus = RecordingBus()
    instrumentation = Instrumentation(bus, EventSettings())
    instrumentation(make_flow(**changes))
    await instrumentation.aclose()
    [event] = bus.events
    assert instrumentation.failures == 0 and event.status == 200
    assert event.request_body == changes.get("request_body", CHAT).decode()


def test_an_exchange_the_builder_fails_on_still_gets_a_bare_event_and_is_counted_not_raised() -> None:
    bus = RecordingBus()
    instrumentation = Instrumentation(bus, EventSettings())
    instrumentation(make_flow(request_headers=None, query="token=secret"))  # not headers: a bug
    [event] = bus.events
    assert (event.request_id, event.status, event.path, event.duration_ms) == (
        "req-1",
        200,
        "/v1/chat/completions",
        812.4,
    )
    assert (event.query, event.request_headers, event.request_body, event.response_body) == ("", {}, "", "")
    assert (event.model, event.usage, event.error) == (None, None, None)
    assert instrumentation.failures == 1
