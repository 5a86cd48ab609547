"""transform: an Event's OpenAI exchange read back (request, answer, streams rebuilt, usage, errors)."""

from __future__ import annotations

import json

import pytest

from llmproxy.dispatch.backends.helicone import helicone_log
from llmproxy.dispatch.backends.lunary import lunary_events
from llmproxy.dispatch.transform import ended_epoch, iso_ms, read_call, run_uuid, started_epoch
from llmproxy.openai.kinds import endpoint_kind
from tests.unit.dispatch.doubles import (
    CHAT_REQUEST,
    CHAT_RESPONSE,
    STARTED_EPOCH,
    STREAM_CHUNKS,
    base64_event,
    chat_event,
    make_event,
    rate_limited_event,
    sse,
    stream_event,
)


def test_a_chat_completion_is_read_as_messages_params_and_the_assistant_message() -> None:
    call = read_call(chat_event())
    assert call.kind == "chat"
    assert call.model == "gpt-4o-mini"
    assert call.input == CHAT_REQUEST["messages"]
    assert call.params == {"temperature": 0.2, "max_tokens": 100}
    assert call.output == {"role": "assistant", "content": "Hello!", "refusal": None}
    assert call.usage == CHAT_RESPONSE["usage"]
    assert call.response == CHAT_RESPONSE
    assert call.error is None


def test_base64_bodies_are_decoded_like_utf8_ones() -> None:
    plain = chat_event()
    assert read_call(base64_event(plain)) == read_call(plain)
    streamed = stream_event()
    assert read_call(base64_event(streamed)) == read_call(streamed)


def test_a_stream_is_rebuilt_into_one_message_with_its_tool_call_and_usage() -> None:
    call = read_call(stream_event())
    assert call.chunks == STREAM_CHUNKS
    assert call.output == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    assert call.response is not None and call.response["choices"][0]["finish_reason"] == "tool_calls"
    assert call.usage == {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}
    assert "stream" in call.params and "stream_options" not in call.params


def test_a_legacy_completion_stream_concatenates_text() -> None:
    chunks = [
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "choices": [{"index": 0, "text": "Hel", "finish_reason": None}],
        },
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "choices": [{"index": 0, "text": "lo", "finish_reason": "stop"}],
        },
    ]
    event = make_event(
        path="/v1/completions",
        stream=True,
        request_body=json.dumps({"model": "gpt-3.5-turbo-instruct", "prompt": "Say hello", "stream": True}),
        response_body=sse(chunks),
    )
    call = read_call(event)
    assert call.kind == "completions"  # the one spelling, as the proxy reads it (llmproxy.openai.kinds)
    assert call.input == "Say hello"
    assert call.output == {"role": "assistant", "content": "Hello"}


def test_a_responses_api_stream_uses_the_completed_response() -> None:
    completed = {
        "id": "resp_1",
        "status": "completed",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hi there"}]}],
        "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
    }
    text = (
        'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n'
        'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}\n\n'
        f"event: response.completed\ndata: {json.dumps({'type': 'response.completed', 'response': completed})}\n\n"
    )
    event = make_event(
        path="/v1/responses",
        stream=True,
        request_body=json.dumps({"model": "gpt-4o-mini", "input": "Hello", "stream": True}),
        response_body=text,
    )
    call = read_call(event)
    assert call.kind == "responses"
    assert call.input == "Hello"
    assert call.output == {"role": "assistant", "content": "Hi there"}
    assert call.usage == completed["usage"]


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings/", "/v1/models"]
)
def test_a_call_is_of_the_kind_the_proxy_reads_from_its_path(path: str) -> None:
    assert read_call(make_event(path=path)).kind == endpoint_kind(path)


def test_an_upstream_error_is_read_as_status_and_message() -> None:
    call = read_call(rate_limited_event())
    assert call.error == "429: Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3."
    assert call.output is None


def test_a_proxy_side_failure_without_a_body_is_named() -> None:
    call = read_call(make_event(status=504, error="upstream_timeout", response_body="", usage=None))
    assert call.error == "upstream_timeout"


def test_a_mid_stream_error_is_reported_even_with_status_200() -> None:
    body = sse([STREAM_CHUNKS[1], {"error": {"message": "The server had an error", "type": "server_error"}}])
    call = read_call(stream_event(response_body=body))
    assert call.error == "The server had an error"


def test_a_non_json_body_gives_no_response_and_the_events_usage() -> None:
    call = read_call(make_event(response_body="<html>oops</html>"))
    assert call.response is None
    assert call.usage == {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}


def test_times_come_from_started_at_and_duration() -> None:
    event = make_event(duration_ms=1234.0)
    assert started_epoch(event) == STARTED_EPOCH
    assert ended_epoch(event) == STARTED_EPOCH + 1.234
    assert iso_ms(started_epoch(event)) == "2026-01-01T12:00:00.250Z"
    assert iso_ms(ended_epoch(event)) == "2026-01-01T12:00:01.484Z"


def test_run_ids_are_canonical_uuids_stable_for_the_same_event() -> None:
    assert (
        run_uuid(make_event(id="0B6A1E2C3D4E4F5A8B9C0D1E2F3A4B5C")) == "0b6a1e2c-3d4e-4f5a-8b9c-0d1e2f3a4b5c"
    )
    odd = make_event(id="evt-42")
    assert run_uuid(odd) == run_uuid(make_event(id="evt-42")) != run_uuid(make_event(id="evt-43"))
    assert len(run_uuid(odd)) == 36


# --- bodies nested too deeply, responses cut by the capture bound -----------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_json_nested_deeper_than_a_backend_can_take_is_read_as_not_json() -> None:
    deep_request = json.dumps({**CHAT_REQUEST, "user": "u"})[:-1] + ', "x": ' + nested(990) + "}"
    deep_answer = '{"x": ' + nested(5000) + ', "usage": {"prompt_tokens": 1}}'
    call = read_call(make_event(request_body=deep_request, response_body=deep_answer))
    assert (call.request, call.response, call.input, call.params) == (None, None, None, {})
    assert call.usage == {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}  # the event's
    chunks = sse([STREAM_CHUNKS[1]])
    call = read_call(stream_event(response_body='data: {"x": ' + nested(300) + "}\n\n" + chunks))
    assert call.chunks == [STREAM_CHUNKS[1]]


def test_json_as_deep_as_real_requests_nest_is_read() -> None:
    schema: dict = {"type": "string"}
    for _ in range(40):  # a structured-output schema nests a few levels per object
        schema = {"type": "object", "properties": {"a": schema}}
    request = {**CHAT_REQUEST, "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
    call = read_call(make_event(request_body=json.dumps(request)))
    assert call.request == request
    many = {**CHAT_REQUEST, "messages": [{"role": "user", "content": "[{}]"}] * 500}  # brackets in strings
    assert read_call(make_event(request_body=json.dumps(many))).request == many


def test_the_usage_of_a_response_cut_by_the_capture_bound_is_the_events() -> None:
    running = {**STREAM_CHUNKS[1], "usage": {"prompt_tokens": 20, "completion_tokens": 1}}  # a count so far
    head = sse([*STREAM_CHUNKS[:2], running], done=False)
    event = stream_event(response_body=head, response_body_truncated=True)
    assert read_call(event).usage == {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}
    event = make_event(response_body=json.dumps(CHAT_RESPONSE)[:100], response_body_truncated=True)
    assert read_call(event).usage == {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}


def test_a_tokens_metadata_reaches_lunary_and_helicone_flat() -> None:
    event = chat_event(metadata={"team": "search", "tier": 2, "tags": ["a", "b"], "none": None})
    start = lunary_events(event)[0]
    assert {k: v for k, v in start["metadata"].items() if k.startswith("token.")} == {
        "token.team": "search",
        "token.tier": 2,
        "token.tags": '["a","b"]',
    }
    meta = helicone_log(event)["providerRequest"]["meta"]
    assert meta["Helicone-Property-Token-team"] == "search"
    assert meta["Helicone-Property-Token-tier"] == "2"
    assert meta["Helicone-Property-Token-tags"] == '["a","b"]'
    assert not any(k.startswith("token.") for k in lunary_events(chat_event())[0]["metadata"])
