"""Usage counted locally when the upstream sent none: prompt and answer of each token-consuming API."""

from __future__ import annotations

import json

from llmproxy.events.model import Usage
from llmproxy.openai.estimate import estimate_usage
from llmproxy.openai.tokencount import TokenCounter
from tests.unit.openai.streams import DEEP, FOX, chat_chunk, sse


def test_stream_without_usage_is_estimated_exactly(counter: TokenCounter) -> None:
    request = json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello, world!"}], "stream": True}
    )
    pieces = ["The quick", " brown fox", " jumps over the", " lazy dog."]
    body = sse(
        chat_chunk(None) | {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        *map(chat_chunk, pieces),
    )
    usage = estimate_usage("/v1/chat/completions", request.encode(), body, True, "gpt-4o", counter)
    # prompt: 3 per message + "user" (1) + "Hello, world!" (4) + 3 reply priming = 11
    assert usage == Usage(prompt_tokens=11, completion_tokens=10, total_tokens=21)


def test_stream_choices_are_counted_separately_and_tool_arguments_count(counter: TokenCounter) -> None:
    request = b'{"model":"gpt-4o","messages":[]}'
    tool = {
        "index": 0,
        "delta": {
            "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "", "arguments": FOX}}
            ]
        },
    }
    body = sse(chat_chunk("Hello,", index=1), {"choices": [tool]}, chat_chunk(" world!", index=1))
    usage = estimate_usage("/v1/chat/completions", request, body, True, "gpt-4o", counter)
    assert usage == Usage(prompt_tokens=3, completion_tokens=14, total_tokens=17)


def test_non_stream_response_without_usage_is_estimated(counter: TokenCounter) -> None:
    request = b'{"model":"gpt-4","messages":[{"role":"user","content":"Hello, world!"}]}'
    response = json.dumps(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": FOX}}]}
    ).encode()
    usage = estimate_usage("/v1/chat/completions", request, response, False, "gpt-4", counter)
    assert usage == Usage(prompt_tokens=11, completion_tokens=10, total_tokens=21)


def test_responses_api_stream_is_estimated_from_text_deltas(counter: TokenCounter) -> None:
    request = json.dumps({"model": "gpt-4o", "instructions": "Hello, world!", "input": FOX}).encode()
    body = b"".join(
        b"event: "
        + t.encode()
        + b"\ndata: "
        + json.dumps({"type": t, "output_index": 0, "delta": d}).encode()
        + b"\n\n"
        for t, d in [("response.output_text.delta", "Hello,"), ("response.output_text.delta", " world!")]
    )
    usage = estimate_usage("/v1/responses", request, body, True, "gpt-4o", counter)
    # (3 + 1 system + 4) + (3 + 1 user + 10) + 3 = 25; completion "Hello, world!" = 4
    assert usage == Usage(prompt_tokens=25, completion_tokens=4, total_tokens=29)


def test_embeddings_count_every_input_and_token_ids_by_length(counter: TokenCounter) -> None:
    request = json.dumps(
        {"model": "text-embedding-3-small", "input": [FOX, "Hello, world!", [1, 2, 3]]}
    ).encode()
    usage = estimate_usage(
        "/v1/embeddings", request, b'{"data":[]}', False, "text-embedding-3-small", counter
    )
    assert usage == Usage(prompt_tokens=17, completion_tokens=0, total_tokens=17)


def test_legacy_completions_count_prompt_and_choice_text(counter: TokenCounter) -> None:
    request = json.dumps({"model": "gpt-3.5-turbo-instruct", "prompt": "Hello, world!"}).encode()
    response = json.dumps({"choices": [{"index": 0, "text": FOX}]}).encode()
    assert estimate_usage(
        "/v1/completions", request, response, False, "gpt-3.5-turbo-instruct", counter
    ) == Usage(4, 10, 14)


def test_a_truncated_request_is_counted_as_raw_text(counter: TokenCounter) -> None:
    usage = estimate_usage(
        "/v1/chat/completions", b"Hello, world!", b'{"choices":[]}', False, "gpt-4o", counter
    )
    assert usage == Usage(prompt_tokens=4, completion_tokens=0, total_tokens=4)


def test_other_endpoints_are_not_estimated(counter: TokenCounter) -> None:
    assert estimate_usage("/v1/models", b"", b'{"data":[]}', False, None, counter) is None


def test_deeply_nested_bodies_are_estimated_from_their_text(counter: TokenCounter) -> None:
    too_deep = b'{"model":"gpt-4o","messages":' + DEEP + b"}"
    deep_but_decodable = json.dumps(
        {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": json.loads("[" * 900 + FOX.join('""') + "]" * 900)}],
        }
    ).encode()
    answer = b'{"choices":[{"message":{"content":' + DEEP + b"}}]}"
    usage = estimate_usage("/v1/chat/completions", too_deep, answer, False, "gpt-4o", counter)
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    usage = estimate_usage("/v1/chat/completions", deep_but_decodable, answer, False, "gpt-4o", counter)
    assert usage is not None and usage.prompt_tokens == 3 + 3 + 1 + 10  # the string 900 lists down counts
    stream = b'data: {"choices":[{"index":0,"delta":{"content":' + DEEP + b"}}]}\n\n" + sse(chat_chunk(FOX))
    usage = estimate_usage("/v1/chat/completions", too_deep, stream, True, "gpt-4o", counter)
    assert usage is not None and usage.completion_tokens == 10
    embeddings = json.dumps({"input": json.loads("[" * 900 + FOX.join('""') + "]" * 900)}).encode()
    usage = estimate_usage("/v1/embeddings", embeddings, b"{}", False, None, counter)
    assert usage == Usage(10, 0, 10)
