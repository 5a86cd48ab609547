"""Through the proxy to the published Event: exactly one event per forwarded request, whatever its bodies.

Deeply nested JSON (either way), responses past the capture bound (usage is still the upstream's, and
Lunary/Helicone get that usage), and credentials in the query string (redacted in the event only).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from yarl import URL

from llmproxy.config import EventSettings
from llmproxy.dispatch.backends.helicone import HeliconeBackend
from llmproxy.dispatch.backends.lunary import LunaryBackend
from llmproxy.events.model import Event, Usage
from llmproxy.proxy.instrument import Instrumentation
from tests.fakes.helicone import FakeHelicone
from tests.fakes.lunary import FakeLunary
from tests.fakes.upstream import CHAT_COMPLETION, json_reply, sse_chunks, sse_reply
from tests.integration.proxy.conftest import Proxy

JSON = {"Content-Type": "application/json"}
CHAT = "/v1/chat/completions"
ANSWER_MODEL = CHAT_COMPLETION["model"]
ANSWER_USAGE = Usage(prompt_tokens=9, completion_tokens=3, total_tokens=12)


def arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


DEEP_REQUESTS = {
    "arrays": b'{"model":"gpt-4o","x":' + arrays(1000) + b"}",
    "objects": b'{"model":"gpt-4o","x":' + objects(1000) + b"}",
    "nested-before-the-model": b'{"x":' + arrays(1000) + b',"model":"gpt-4o"}',
    "nested-messages": b'{"model":"gpt-4o","messages":[{"role":"user","content":' + objects(1500) + b"}]}",
    "past-the-capture-bound": b'{"model":"gpt-4o","x":' + arrays(50_000) + b"}",
}


class Published:
    """The bus the Instrumentation publishes to, and a way to wait for what it publishes."""

    def __init__(self, settings: EventSettings) -> None:
        self.events: list[Event] = []
        self.instrumentation = Instrumentation(self, settings)

    def publish(self, event: Event) -> None:
        self.events.append(event)

    async def exactly(self, count: int, timeout_s: float = 10.0) -> list[Event]:
        """The events once ``count`` were published and no token count is pending; never more."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.events) >= count and not self.instrumentation.stats()["estimating"]:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # room for a second event for the same exchange to show up
        assert len(self.events) == count, self.events
        assert self.instrumentation.failures == 0
        return self.events


MakeObserved = Callable[..., Awaitable[tuple[Proxy, Published]]]


@pytest.fixture
async def observed(make_proxy) -> AsyncIterator[MakeObserved]:
    made: list[Published] = []

    async def make(**changes: Any) -> tuple[Proxy, Published]:
        proxy = await make_proxy(**changes)
        published = Published(
            EventSettings(
                max_request_body_bytes=changes.get("max_request_body_bytes", 65536),
                max_response_body_bytes=changes.get("max_response_body_bytes", 262144),
            )
        )
        proxy.observers.append(published.instrumentation)
        made.append(published)
        return proxy, published

    yield make
    for published in made:
        await published.instrumentation.aclose()


async def post(proxy: Proxy, body: bytes, path: str = CHAT) -> tuple[int, bytes]:
    async with proxy.request("POST", path, data=body, headers=proxy.auth(**JSON)) as resp:
        return resp.status, await resp.read()


# --- deeply nested JSON ----------------------------------------------------------------------------


@pytest.mark.parametrize("body", DEEP_REQUESTS.values(), ids=DEEP_REQUESTS.keys())
async def test_a_deeply_nested_request_is_forwarded_and_makes_exactly_one_event(observed, body):
    proxy, published = await observed()
    status, _ = await post(proxy, body)
    assert status == 200
    assert proxy.upstream.requests[0].body == body
    [event] = await published.exactly(1)
    assert (event.status, event.error) == (200, None)
    assert event.model == ANSWER_MODEL  # the request's cannot be read; the upstream's answer names one
    assert (event.usage, event.usage_source) == (ANSWER_USAGE, "response")
    assert event.request_body == body[:65536].decode()
    assert event.request_body_truncated is (len(body) > 65536)


@pytest.mark.parametrize(
    "body",
    [
        *DEEP_REQUESTS.values(),
        b'{"model":' + arrays(900) + b"}",  # the whitelisted value itself, shallow enough to decode
        b'{"model":' + arrays(990) + b"}",
        b'{"model":' + objects(997) + b"}",
        b'{"model":"gpt-4o","model":' + arrays(1000) + b"}",  # a repeated key takes the slow parse
        b'{"mod\\u0065l":"gpt-4o","x":' + arrays(1000) + b"}",
    ],
)
async def test_with_a_param_whitelist_a_deeply_nested_request_is_a_400_never_a_500(observed, body):
    proxy, published = await observed(param_whitelist={"model": ["gpt-4o*"]})
    async with proxy.request("POST", CHAT, data=body, headers=proxy.auth(**JSON)) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] in ("bad_request", "invalid_request_body", "param_not_allowed")
    assert error["type"] == "invalid_request_error" and error["message"]
    assert proxy.upstream.requests == []
    await published.exactly(0)  # refused before forwarding: no event, as for every refusal


async def test_a_deeply_nested_upstream_answer_makes_one_event_with_its_usage(observed):
    proxy, published = await observed()
    answer = json.dumps({**CHAT_COMPLETION, "model": "gpt-4o"}).encode()
    deep = answer[:1] + b'"x":' + arrays(1000) + b"," + answer[1:]  # nested before model and usage
    proxy.upstream.script(json_reply(deep))
    status, received = await post(proxy, b'{"model":"gpt-4o-mini","messages":[]}')
    assert (status, received) == (200, deep)
    [event] = await published.exactly(1)
    assert event.model == "gpt-4o-mini"
    assert event.response_body == deep.decode()
    assert (event.usage, event.usage_source) == (ANSWER_USAGE, "response")


async def test_a_stream_with_deeply_nested_chunks_makes_one_event_with_its_usage(observed):
    proxy, published = await observed()
    deep = b'data: {"choices":[],"usage":null,"x":' + arrays(1000) + b"}\n\n"
    frames = sse_chunks("Hel", "lo")
    proxy.upstream.script(sse_reply([deep, *frames[:-1], deep, frames[-1]]))
    status, received = await post(proxy, b'{"model":"gpt-4o-mini","stream":true}')
    assert status == 200 and received.count(b'"x":[') == 2
    [event] = await published.exactly(1)
    assert event.stream is True
    assert (event.usage, event.usage_source) == (ANSWER_USAGE, "response")


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"gpt-4o","messages":[{"role":"user","content":' + objects(600) + b"}]}",
        b'{"model":"gpt-4o","messages":[{"role":"user","content":' + arrays(5000) + b"}]}",
    ],
    ids=["decodable", "too-deep-to-decode"],
)
async def test_usage_is_estimated_for_a_deep_request_whose_answer_has_none(observed, body):
    proxy, published = await observed()
    answer = {k: v for k, v in CHAT_COMPLETION.items() if k != "usage"}
    proxy.upstream.script(json_reply(answer))
    assert (await post(proxy, body))[0] == 200
    [event] = await published.exactly(1)
    assert event.usage_source == "estimated"
    assert event.usage is not None and event.usage.prompt_tokens > 0 and event.usage.completion_tokens > 0
    assert published.instrumentation.stats()["unestimated"] == 0


async def test_events_with_deeply_nested_bodies_reach_lunary_and_helicone_with_their_batch(observed):
    proxy, published = await observed()
    answer = json.dumps(CHAT_COMPLETION).encode()
    proxy.upstream.script(
        json_reply(),
        json_reply(answer[:1] + b'"x":' + arrays(990) + b"," + answer[1:]),  # decodes, nests too deep to send
        json_reply(),
        sse_reply([b'data: {"choices":[],"x":' + objects(1000) + b"}\n\n", *sse_chunks("Hi")]),
    )
    await post(proxy, b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}')
    await post(proxy, b'{"model":"gpt-4o","messages":[{"role":"user","content":' + arrays(990) + b"}]}")
    await post(proxy, DEEP_REQUESTS["objects"])
    await post(proxy, b'{"model":"gpt-4o-mini","stream":true,"x":' + arrays(980) + b"}")
    events = await published.exactly(4)

    async with FakeLunary() as lunary:
        backend = LunaryBackend(lunary.url, lunary.api_key)
        await backend.send(events)
        await backend.aclose()
        assert lunary.violations == []
        assert sorted(lunary.runs) == sorted(e.id for e in events)
        assert all(run["status"] == "success" for run in lunary.runs.values())
        assert all(
            run["end"]["tokensUsage"] == {"prompt": 9, "completion": 3} for run in lunary.runs.values()
        )
    async with FakeHelicone() as helicone:
        backend = HeliconeBackend(helicone.url, helicone.api_key)
        await backend.send(events)
        await backend.aclose()
        assert helicone.violations == []
        assert sorted(helicone.logged_ids()) == sorted(e.id for e in events)


# --- usage past the capture bound ------------------------------------------------------------------

BIG_USAGE = {"prompt_tokens": 12, "completion_tokens": 2500, "total_tokens": 2512}


def long_stream() -> list[bytes]:
    """2,500 chat chunks (about 500 KB, twice the default capture bound), then the include_usage chunk."""
    frames = sse_chunks(*(f"token{i} " for i in range(2500)), usage=False)
    last = {"id": "chatcmpl-fake123", "object": "chat.completion.chunk", "choices": [], "usage": BIG_USAGE}
    return [*frames[:-1], b"data: " + json.dumps(last).encode() + b"\n\n", frames[-1]]


def long_answer(usage: dict[str, int]) -> bytes:
    """A 300 KB chat completion, past the default capture bound, with the upstream's usage at its end."""
    text = " ".join(f"word{i}" for i in range(50_000))[:300_000]
    message = {"role": "assistant", "content": text}
    choices = [{"index": 0, "message": message, "finish_reason": "length"}]
    return json.dumps({**CHAT_COMPLETION, "choices": choices, "usage": usage}).encode()


async def test_a_stream_longer_than_the_capture_bound_keeps_the_upstream_usage(observed):
    proxy, published = await observed()
    frames = long_stream()
    proxy.upstream.script(sse_reply(frames))
    status, received = await post(proxy, b'{"model":"gpt-4o-mini","stream":true}')
    assert (status, received) == (200, b"".join(frames))
    [event] = await published.exactly(1)
    assert event.response_body_truncated is True
    assert (event.usage, event.usage_source) == (Usage(12, 2500, 2512), "response")


@pytest.mark.parametrize("gzipped", [False, True], ids=["identity", "gzip"])
async def test_a_json_answer_larger_than_the_capture_bound_keeps_the_upstream_usage(observed, gzipped):
    proxy, published = await observed()
    answer = long_answer({"prompt_tokens": 3, "completion_tokens": 60000, "total_tokens": 60003})
    proxy.upstream.script(json_reply(answer, gzipped=gzipped))
    async with proxy.request(
        "POST",
        CHAT,
        data=b'{"model":"gpt-4o-mini"}',
        headers=proxy.auth(**JSON, **{"Accept-Encoding": "gzip"}),
    ) as resp:
        assert resp.status == 200
        assert await resp.read() == answer  # (the client undoes the gzip)
    [event] = await published.exactly(1)
    assert event.response_body_truncated is True and len(event.response_body) == 262144
    assert (event.usage, event.usage_source) == (Usage(3, 60000, 60003), "response")


async def test_a_responses_stream_whose_final_event_is_larger_than_the_tail_keeps_its_usage(observed):
    proxy, published = await observed(max_response_body_bytes=4096)
    usage = {"input_tokens": 20, "output_tokens": 7000, "total_tokens": 7020, "output_tokens_details": {}}
    text = "lorem ipsum " * 5000  # 60 KB in the final event alone, before its usage
    completed = {
        "type": "response.completed",
        "response": {"id": "resp_1", "output_text": text, "usage": usage, "metadata": {"k": "v" * 500}},
    }
    frames = [
        b'event: response.created\ndata: {"type":"response.created","response":{"usage":null}}\n\n',
        *(b'data: {"type":"response.output_text.delta","delta":"lorem ipsum "}\n\n' for _ in range(500)),
        b"event: response.completed\ndata: " + json.dumps(completed).encode() + b"\n\n",
    ]
    proxy.upstream.script(sse_reply(frames))
    assert (await post(proxy, b'{"model":"gpt-4o","input":"hi","stream":true}', "/v1/responses"))[0] == 200
    [event] = await published.exactly(1)
    assert (event.usage, event.usage_source) == (Usage(20, 7000, 7020), "response")


async def test_lunary_and_helicone_get_the_usage_of_responses_past_the_capture_bound(observed):
    proxy, published = await observed()
    proxy.upstream.script(sse_reply(long_stream()), json_reply(long_answer(BIG_USAGE)))
    await post(proxy, b'{"model":"gpt-4o-mini","stream":true,"messages":[]}')
    await post(proxy, b'{"model":"gpt-4o-mini","messages":[]}')
    events = await published.exactly(2)
    assert [e.usage for e in events] == [Usage(12, 2500, 2512)] * 2

    async with FakeLunary() as lunary:
        backend = LunaryBackend(lunary.url, lunary.api_key)
        await backend.send(events)
        await backend.aclose()
        assert lunary.violations == []
        ends = [lunary.runs[e.id]["end"] for e in events]
        assert [end["tokensUsage"] for end in ends] == [{"prompt": 12, "completion": 2500}] * 2
    async with FakeHelicone() as helicone:
        backend = HeliconeBackend(helicone.url, helicone.api_key)
        await backend.send(events)
        await backend.aclose()
        assert helicone.violations == []
        stream_log, json_log = sorted(
            helicone.logs, key=lambda log: "streamed_data" not in log["providerResponse"]["json"]
        )
        chunks = stream_log["providerResponse"]["json"]["streamed_data"]
        assert [c["usage"] for c in chunks if isinstance(c, dict) and c.get("usage")] == [BIG_USAGE]
        assert json_log["providerResponse"]["json"]["usage"] == BIG_USAGE


# --- credentials in the query string -----------------------------------------------------------------


async def test_credentials_in_the_query_are_redacted_in_the_event_but_forwarded_unchanged(observed):
    proxy, published = await observed()
    query = (
        "api-version=2024-06-01&api_key=sk-proj-abcdefghij0123456789&key=AIzaSyD-secret_value"
        "&token=t0k3n&access_token=ya29.a0Af&trace=1&note=Bearer%20abc.def&x=sk-live0123456789abcdef"
        "&empty=&flag&order=asc&Access%5FToken=hidden&sk-bare0123456789abc"
    )
    target = URL(f"{CHAT}?{query}", encoded=True)  # exactly these bytes on the request line
    async with proxy.request(
        "POST", target, data=b'{"model":"gpt-4o-mini"}', headers=proxy.auth(**JSON)
    ) as resp:
        status = resp.status
    assert status == 200
    assert proxy.upstream.requests[0].query == query
    [event] = await published.exactly(1)
    assert event.query == (
        "api-version=2024-06-01&api_key=[REDACTED]&key=[REDACTED]"
        "&token=[REDACTED]&access_token=[REDACTED]&trace=1&note=[REDACTED]&x=[REDACTED]"
        "&empty=&flag&order=asc&Access%5FToken=[REDACTED]&[REDACTED]"
    )
    for secret in ("sk-proj", "AIza", "t0k3n", "ya29", "abc.def", "sk-live", "hidden", "sk-bare"):
        assert secret not in event.query
