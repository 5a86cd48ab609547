"""Usage read from upstream responses, and counted offline when the upstream sent none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmproxy.events.model import Usage
from llmproxy.proxy import tokencount
from llmproxy.proxy.tokencount import TokenCounter, encoding_name
from llmproxy.proxy.usage import endpoint_kind, estimate_usage, response_model, response_usage, usage_in

FOX = "The quick brown fox jumps over the lazy dog."  # 10 tokens in cl100k_base and o200k_base

# the OpenAI cookbook's example, verified there against the API: 124 prompt tokens (gpt-4o), 129 (gpt-4)
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()


def sse(*chunks: object, done: bool = True, sep: bytes = b"\n\n") -> bytes:
    body = b"".join(b"data: " + json.dumps(c).encode() + sep for c in chunks)
    return body + (b"data: [DONE]" + sep if done else b"")


def chat_chunk(content: str | None, index: int = 0, model: str = "gpt-4o-mini-2024-07-18") -> dict:
    delta = {} if content is None else {"content": content}
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": index, "delta": delta}],
    }


# --- reading what the upstream reported ----------------------------------------------------------


def test_chat_completion_json_usage_is_read() -> None:
    body = b'{"id":"x","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}'
    assert response_usage(body, stream=False) == Usage(12, 30, 42)


def test_responses_api_input_and_output_tokens_map_to_prompt_and_completion() -> None:
    body = b'{"object":"response","usage":{"input_tokens":7,"output_tokens":5,"total_tokens":12}}'
    assert response_usage(body, stream=False) == Usage(7, 5, 12)


def test_embeddings_usage_without_completion_tokens_is_read() -> None:
    body = b'{"object":"list","data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}'
    assert response_usage(body, stream=False) == Usage(8, 0, 8)


def test_missing_total_is_the_sum() -> None:
    assert response_usage(b'{"usage":{"prompt_tokens":3,"completion_tokens":4}}', stream=False) == Usage(
        3, 4, 7
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"choices":[]}',
        b'{"usage":null}',
        b'{"usage":{"prompt_tokens":"many"}}',
        b'{"usage":{"prompt',
        b"not json",
    ],
)
def test_json_without_usable_usage_gives_none(body: bytes) -> None:
    assert response_usage(body, stream=False) is None


def test_stream_usage_comes_from_the_final_usage_chunk() -> None:
    body = sse(
        chat_chunk("Hel") | {"usage": None},
        chat_chunk("lo") | {"usage": None},
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        },
    )
    assert response_usage(body, stream=True) == Usage(9, 2, 11)


def test_stream_usage_is_found_with_crlf_lines_and_no_space_after_data() -> None:
    body = b'data:{"choices":[{"index":0,"delta":{"content":"x"}}]}\r\n\r\n'
    body += b'data:{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\r\n\r\n'
    body += b"data:[DONE]\r\n\r\n"
    assert response_usage(body, stream=True) == Usage(1, 1, 2)


def test_responses_api_stream_usage_comes_from_response_completed() -> None:
    completed = {
        "type": "response.completed",
        "sequence_number": 9,
        "response": {
            "id": "resp_1",
            "model": "gpt-4o",
            "usage": {"input_tokens": 20, "output_tokens": 6, "total_tokens": 26},
        },
    }
    body = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"hi"}\n\n'
    body += b"event: response.completed\ndata: " + json.dumps(completed).encode() + b"\n\n"
    assert response_usage(body, stream=True) == Usage(20, 6, 26)


def test_stream_without_usage_chunk_gives_none() -> None:
    assert response_usage(sse(chat_chunk("a"), chat_chunk("b")), stream=True) is None


def test_model_is_read_from_the_first_stream_chunk_and_from_json() -> None:
    assert response_model(sse(chat_chunk("a", model="gpt-4o-2024-08-06")), stream=True) == "gpt-4o-2024-08-06"
    assert response_model(b'{"model":"gpt-4.1","choices":[]}', stream=False) == "gpt-4.1"
    assert response_model(b"<html>", stream=False) is None


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/chat/completions", "chat"),
        ("/v1/completions", "completions"),
        ("/v1/responses", "responses"),
        ("/v1/embeddings/", "embeddings"),
        ("/v1/models", None),
        ("/v1/responses/resp_1", None),
    ],
)
def test_endpoint_kind_names_token_consuming_apis(path: str, kind: str | None) -> None:
    assert endpoint_kind(path) == kind


# --- offline token counting ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("gpt-oss-20b", "o200k_base"),
        ("some-local-llama", "o200k_base"),
        (None, "o200k_base"),
    ],
)
def test_encoding_follows_the_model(model: str | None, encoding: str) -> None:
    assert encoding_name(model) == encoding


def test_vocabularies_load_offline_and_encode_exactly(counter: TokenCounter) -> None:
    o200k, cl100k = counter.encoding("gpt-4o"), counter.encoding("gpt-4")
    assert o200k is not None and cl100k is not None
    assert o200k.encode_ordinary("Hello, world!") == [13225, 11, 2375, 0]
    assert cl100k.encode_ordinary("Hello, world!") == [9906, 11, 1917, 0]
    assert (counter.count_text("日本語 🚀", "gpt-4o"), counter.count_text("日本語 🚀", "gpt-4")) == (4, 7)
    assert counter.count_text(FOX, "gpt-4o") == counter.count_text(FOX, "gpt-4") == 10


def test_chat_prompt_tokens_match_the_cookbook(counter: TokenCounter) -> None:
    assert counter.count_chat_prompt(COOKBOOK_MESSAGES, "gpt-4o-mini") == 124
    assert counter.count_chat_prompt(COOKBOOK_MESSAGES, "gpt-4-0613") == 129


def test_without_a_vocabulary_counts_are_chars_over_four(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tokencount, "_DATA_PACKAGE", "no-such-distribution")
    offline = TokenCounter(vocab_dir=tmp_path)
    assert not offline.is_exact("gpt-4o")
    assert offline.count_text(FOX, "gpt-4o") == 11  # 44 chars


def test_a_vocabulary_that_fails_its_pinned_hash_is_not_used(tmp_path: Path) -> None:
    (tmp_path / "o200k_base.tiktoken").write_bytes(b"SGVsbG8= 0\n")
    tampered = TokenCounter(vocab_dir=tmp_path)
    assert not tampered.is_exact("gpt-4o")
    assert tampered.is_exact("gpt-4")  # cl100k still comes from the packaged vocabulary


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


# --- bodies the event builder cannot take apart: cut by the capture bound, or nested too deeply ------

DEEP = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize(
    ("text", "usage"),
    [
        (b'"completion_tokens":2,"total_tokens":5}}', None),  # the key itself was cut off
        (b'":1}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}', Usage(3, 2, 5)),
        (
            b'ge":null}\n\ndata: {"usage": {"prompt_tokens": 12, "completion_tokens": 2500}}\n\n',
            Usage(12, 2500, 2512),
        ),
        (
            b'"usage":{"input_tokens":20,"output_tokens":7,"output_tokens_details":{"r":1}},"user":null}}',
            Usage(20, 7, 27),
        ),
        (b'"usage":{"prompt_tokens":1},"usage":null', Usage(1, 0, 1)),  # the last usage object counts
        (b'"usage":{"prompt_tokens":1,"completion_tokens":1}' + b"...cut", Usage(1, 1, 2)),
        (
            b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}, "x":{"usage": "none"}',
            Usage(1, 1, 2),
        ),
        (
            b'{"content":"say \\"usage\\": {\\"prompt_tokens\\": 99}"}',
            None,
        ),  # inside a string: text, not usage
        (b'"usage":{"prompt_tokens":"many"}', None),
        (b'"usage":{"prompt_tokens":1', None),
        (b"", None),
    ],
)
def test_usage_is_found_in_a_fragment_of_json_or_sse_text(text: bytes, usage: Usage | None) -> None:
    assert usage_in(text) == usage


def test_the_usage_of_a_json_answer_too_deep_to_decode_is_still_read() -> None:
    body = b'{"x":' + DEEP + b',"model":"gpt-4o","usage":{"prompt_tokens":9,"completion_tokens":3}}'
    assert response_usage(body, stream=False) == Usage(9, 3, 12)
    assert response_model(body, stream=False) is None


def test_deeply_nested_stream_chunks_are_skipped() -> None:
    deep = b'data: {"model":"x","usage":null,"y":' + DEEP + b"}\n\n"
    body = deep + sse(
        chat_chunk("Hi"), {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    )
    assert response_usage(body + deep, stream=True) == Usage(1, 1, 2)
    assert response_model(body, stream=True) == "gpt-4o-mini-2024-07-18"


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
