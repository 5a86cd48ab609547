"""HeliconeBackend against the fake Helicone: the logs it posts, field by field (research/backends.md §2)."""

from __future__ import annotations

import json
import uuid

import aiohttp

from llmproxy.dispatch.backends.helicone import HeliconeBackend
from llmproxy.events.model import Usage
from tests.fakes.helicone import FakeHelicone
from tests.unit.dispatch.doubles import (
    CHAT_REQUEST,
    CHAT_RESPONSE,
    STREAM_CHUNKS,
    STREAM_REQUEST,
    RecordingSource,
    chat_event,
    dispatch_until,
    make_event,
    rate_limited_event,
    sse,
    stream_event,
)


async def send(fake: FakeHelicone, *events: object, **options: object) -> None:
    backend = HeliconeBackend(fake.url, fake.api_key, **options)  # type: ignore[arg-type]
    try:
        await backend.send(list(events))  # type: ignore[arg-type]
    finally:
        await backend.aclose()


async def test_a_chat_completion_is_logged_with_its_request_response_and_real_timing(
    fake_helicone: FakeHelicone,
) -> None:
    event = chat_event()
    await send(fake_helicone, event)
    [request] = fake_helicone.requests
    assert request["path"] == "/custom/v1/log"
    assert request["headers"]["Authorization"] == f"Bearer {fake_helicone.api_key}"
    assert request["json"] == {
        "providerRequest": {
            "url": "/v1/chat/completions",
            "json": CHAT_REQUEST,
            "meta": {
                "Helicone-Request-Id": event.id,
                "Helicone-Property-Request-Id": event.request_id,
                "Helicone-Property-Project-Id": "proj-1",
                "Helicone-Property-Token-Id": "tok-1",
                "Helicone-User-Id": "user-123",
            },
        },
        "providerResponse": {
            "status": 200,
            "headers": {"content-type": "application/json", "x-request-id": "req_upstream_1"},
            "json": CHAT_RESPONSE,
        },
        "timing": {
            "startTime": {"seconds": 1767268800, "milliseconds": 250},
            "endTime": {"seconds": 1767268801, "milliseconds": 484},
            "timeToFirstToken": 180,
        },
    }
    assert fake_helicone.violations == []


async def test_a_stream_is_logged_as_streamed_data_chunk_by_chunk(fake_helicone: FakeHelicone) -> None:
    await send(fake_helicone, stream_event())
    [log] = fake_helicone.logs
    assert log["providerRequest"]["json"] == STREAM_REQUEST  # stream: true kept
    assert log["providerResponse"]["json"] == {"streamed_data": STREAM_CHUNKS}
    assert fake_helicone.violations == []


async def test_a_stream_without_a_usage_chunk_gets_the_events_usage_injected(
    fake_helicone: FakeHelicone,
) -> None:
    without_usage = sse(STREAM_CHUNKS[:-1])
    await send(fake_helicone, stream_event(response_body=without_usage, usage=Usage(20, 7, 27)))
    chunks = fake_helicone.logs[0]["providerResponse"]["json"]["streamed_data"]
    assert chunks[:-1] == STREAM_CHUNKS[:-1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 20,
        "completion_tokens": 7,
        "total_tokens": 27,
    }
    assert fake_helicone.violations == []


async def test_a_response_without_usage_gets_the_events_usage_injected(fake_helicone: FakeHelicone) -> None:
    body = {k: v for k, v in CHAT_RESPONSE.items() if k != "usage"}
    await send(fake_helicone, chat_event(response_body=json.dumps(body), usage_source="estimated"))
    logged = fake_helicone.logs[0]["providerResponse"]["json"]
    assert logged == {**body, "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}}
    assert fake_helicone.violations == []


async def test_an_upstream_error_is_logged_with_its_status_and_body(fake_helicone: FakeHelicone) -> None:
    await send(fake_helicone, rate_limited_event())
    response = fake_helicone.logs[0]["providerResponse"]
    assert response["status"] == 429
    assert response["json"]["error"]["code"] == "rate_limit_exceeded"
    assert response["headers"]["retry-after"] == "20"
    assert fake_helicone.violations == []


async def test_a_non_json_body_is_sent_as_text_and_a_failed_stream_request_not_as_a_stream(
    fake_helicone: FakeHelicone,
) -> None:
    event = make_event(
        status=502,
        usage=None,
        request_body=json.dumps(STREAM_REQUEST),
        response_body="<html>Bad gateway</html>",
    )
    await send(fake_helicone, event)
    log = fake_helicone.logs[0]
    assert log["providerResponse"]["json"] == {}
    assert log["providerResponse"]["textBody"] == "<html>Bad gateway</html>"
    assert log["providerRequest"]["json"]["stream"] is False  # else Helicone would parse it as SSE
    assert fake_helicone.violations == []


async def test_get_requests_are_not_logged(fake_helicone: FakeHelicone) -> None:
    await send(fake_helicone, make_event(method="GET", path="/v1/models", request_body=""))
    assert fake_helicone.requests == []


async def test_a_retried_batch_does_not_post_again_what_helicone_accepted(
    fake_helicone: FakeHelicone,
) -> None:
    first, second, third = chat_event(), stream_event(), chat_event()
    fake_helicone.inject({"pass": True}, {"status": 503})
    source = RecordingSource()
    source.put(first, second, third)
    backend = HeliconeBackend(fake_helicone.url, fake_helicone.api_key, concurrency=1)
    await dispatch_until(source, backend, lambda: len(source.acked) == 3)
    await backend.aclose()
    posted = [
        r["json"]["providerRequest"]["meta"]["Helicone-Request-Id"]
        for r in fake_helicone.requests
        if r["json"]
    ]
    assert posted == [first.id, second.id, second.id, third.id]  # first once, third never before the retry
    assert fake_helicone.logged_ids() == [first.id, second.id, third.id]


async def test_a_200_with_an_auth_error_is_a_failure(fake_helicone: FakeHelicone) -> None:
    fake_helicone.inject({"status": 200, "body": {"error": "Auth failed!"}})
    source = RecordingSource()
    source.put(chat_event())
    backend = HeliconeBackend(fake_helicone.url, fake_helicone.api_key)
    await dispatch_until(source, backend, lambda: bool(source.dead))
    await backend.aclose()
    assert source.acked == [] and "Auth failed!" in source.dead[0][1]


async def test_the_fake_answers_a_schema_error_with_the_workers_message(fake_helicone: FakeHelicone) -> None:
    body = {"providerRequest": {"url": 1, "json": {}, "meta": {}}, "providerResponse": {}, "timing": {}}
    headers = {"Authorization": f"Bearer {fake_helicone.api_key}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{fake_helicone.url}/custom/v1/log", json=body, headers=headers) as resp:
            assert resp.status == 400
            assert await resp.json() == {
                "error": "One of the required fields is missing, providerRequest, providerResponse, or timing"
            }
        async with session.post(f"{fake_helicone.url}/custom/v1/log", json=body) as resp:
            assert (resp.status, await resp.text()) == (401, "Unauthorized")


async def test_request_ids_are_uuids_even_for_hex_event_ids(fake_helicone: FakeHelicone) -> None:
    hex_id = uuid.uuid4().hex
    await send(fake_helicone, chat_event(id=hex_id))
    assert fake_helicone.logged_ids() == [str(uuid.UUID(hex_id))]
    assert fake_helicone.violations == []
