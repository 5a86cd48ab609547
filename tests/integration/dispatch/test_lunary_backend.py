"""LunaryBackend against the fake Lunary: the runs it creates, field by field (research/backends.md §1)."""

from __future__ import annotations

import json
import uuid

import aiohttp

from llmproxy.dispatch.backends.lunary import LunaryBackend
from tests.fakes.lunary import FakeLunary
from tests.unit.dispatch.doubles import (
    CHAT_REQUEST,
    RecordingSource,
    chat_event,
    dispatch_until,
    make_event,
    rate_limited_event,
    stream_event,
)


async def test_a_chat_completion_becomes_a_start_and_an_end_with_the_same_run_id(
    fake_lunary: FakeLunary,
) -> None:
    event = chat_event()
    backend = LunaryBackend(fake_lunary.url, fake_lunary.api_key)
    await backend.send([event])
    await backend.aclose()
    [request] = fake_lunary.requests
    assert request["headers"]["Authorization"] == f"Bearer {fake_lunary.api_key}"
    assert request["headers"]["Content-Type"] == "application/json"
    start, end = request["json"]["events"]
    assert start == {
        "type": "llm",
        "event": "start",
        "runId": event.id,
        "name": "gpt-4o-mini",
        "timestamp": "2026-01-01T12:00:00.250Z",
        "input": CHAT_REQUEST["messages"],
        "params": {"temperature": 0.2, "max_tokens": 100},
        "userId": "user-123",
        "tags": ["llm-proxy"],
        "runtime": "llm-proxy",
        "metadata": {
            "request_id": event.request_id,
            "project_id": "proj-1",
            "token_id": "tok-1",
            "path": "/v1/chat/completions",
            "status": 200,
            "duration_ms": 1234.0,
            "stream": False,
        },
    }
    assert end == {
        "type": "llm",
        "event": "end",
        "runId": event.id,
        "name": "gpt-4o-mini",
        "timestamp": "2026-01-01T12:00:01.484Z",
        "output": {"role": "assistant", "content": "Hello!", "refusal": None},
        "tokensUsage": {"prompt": 12, "completion": 9, "promptCached": 4},
    }
    assert fake_lunary.runs[event.id]["status"] == "success"
    assert fake_lunary.violations == []


async def test_a_stream_ends_with_the_rebuilt_message_and_the_usage_chunk_counts(
    fake_lunary: FakeLunary,
) -> None:
    event = stream_event()
    backend = LunaryBackend(fake_lunary.url, fake_lunary.api_key)
    await backend.send([event])
    await backend.aclose()
    end = fake_lunary.runs[event.id]["end"]
    assert end["output"]["content"] == "Let me check."
    assert end["output"]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
    }
    assert end["tokensUsage"] == {"prompt": 20, "completion": 7}
    assert fake_lunary.runs[event.id]["start"]["params"]["stream"] is True
    assert fake_lunary.violations == []


async def test_an_upstream_429_becomes_a_start_and_an_error(fake_lunary: FakeLunary) -> None:
    event = rate_limited_event()
    backend = LunaryBackend(fake_lunary.url, fake_lunary.api_key)
    await backend.send([event])
    await backend.aclose()
    run = fake_lunary.runs[event.id]
    assert run["status"] == "error" and run["end"] is None
    assert run["error"]["error"] == {
        "message": "429: Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3."
    }
    assert fake_lunary.violations == []


async def test_hex_event_ids_are_sent_as_canonical_uuids(fake_lunary: FakeLunary) -> None:
    hex_id = uuid.uuid4().hex
    backend = LunaryBackend(fake_lunary.url, fake_lunary.api_key)
    await backend.send([chat_event(id=hex_id)])
    await backend.aclose()
    assert list(fake_lunary.runs) == [str(uuid.UUID(hex_id))]


async def test_requests_that_are_not_model_calls_are_not_sent(fake_lunary: FakeLunary) -> None:
    backend = LunaryBackend(fake_lunary.url, fake_lunary.api_key)
    await backend.send([make_event(method="GET", path="/v1/models", request_body="")])
    await backend.send([make_event(path="/v1/files")])
    await backend.aclose()
    assert fake_lunary.requests == []


async def test_a_duplicate_start_on_redelivery_counts_as_delivered(fake_lunary: FakeLunary) -> None:
    event = chat_event()
    backend = LunaryBackend(fake_lunary.url, fake_lunary.api_key)
    await backend.send([event])
    await backend.send([event])  # no DeliveryError although Lunary answers success: false for the start
    await backend.aclose()
    assert [r["success"] for r in fake_lunary.results] == [True, True, False, True]


async def test_a_run_lunary_refuses_in_a_200_answer_is_dead_lettered_alone(fake_lunary: FakeLunary) -> None:
    good, bad = chat_event(), chat_event()
    refusal = {"results": [{"id": bad.id, "success": False, "error": "value too long for type"}]}
    fake_lunary.inject(
        {"status": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(refusal)},  # both
        {"pass": True},  # the first half: good
        {"status": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(refusal)},  # bad
    )
    source = RecordingSource()
    source.put(good, bad)
    backend = LunaryBackend(fake_lunary.url, fake_lunary.api_key)
    await dispatch_until(source, backend, lambda: bool(source.dead))
    await backend.aclose()
    assert [d.event for d, _ in source.dead] == [bad]
    assert "value too long for type" in source.dead[0][1]
    assert fake_lunary.runs[good.id]["status"] == "success"


async def test_the_fake_refuses_a_bare_array_like_the_real_server(fake_lunary: FakeLunary) -> None:
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {fake_lunary.api_key}"}
        async with session.post(f"{fake_lunary.url}/v1/runs/ingest", json=[], headers=headers) as resp:
            assert resp.status == 500
            assert await resp.json() == {"message": "Missing events payload."}
        async with session.post(f"{fake_lunary.url}/v1/runs/ingest", json={"events": []}) as resp:
            assert resp.status == 402
