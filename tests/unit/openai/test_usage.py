"""The model and usage an exchange names, read from the request and the upstream's JSON or SSE answer."""

from __future__ import annotations

import json

import pytest

from llmproxy.events.model import PromptTokensDetails, Usage
from llmproxy.openai.usage import request_model, response_model, response_usage, usage_in
from tests.unit.openai.streams import DEEP, chat_chunk, sse

# --- reading what the upstream reported ----------------------------------------------------------


def test_chat_completion_json_usage_is_read() -> None:
    body = b'{"id":"x","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}'
    assert response_usage(body, stream=False) == Usage(12, 30, 42)


def test_responses_api_input_and_output_tokens_map_to_prompt_and_completion() -> None:
    body = b'{"object":"response","usage":{"input_tokens":7,"output_tokens":5,"total_tokens":12}}'
    assert response_usage(body, stream=False) == Usage(7, 5, 12)


def test_cached_prompt_tokens_of_chat_and_responses_are_read() -> None:
    chat = (
        b'{"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,'
        b'"prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0},'
        b'"completion_tokens_details":{"reasoning_tokens":0}}}'
    )
    responses = b'{"usage":{"input_tokens":50,"input_tokens_details":{"cached_tokens":32},"output_tokens":5}}'
    assert response_usage(chat, stream=False) == Usage(2006, 300, 2306, PromptTokensDetails(1920))
    assert response_usage(chat, stream=False).cached_tokens == 1920
    assert response_usage(responses, stream=False) == Usage(50, 5, 55, PromptTokensDetails(32))
    assert usage_in(b"data: " + chat[1:-1] + b"\n\n") == Usage(2006, 300, 2306, PromptTokensDetails(1920))


def test_zero_or_absent_cached_tokens_leave_the_usage_as_it_was() -> None:
    body = b'{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":0}}}'
    usage = response_usage(body, stream=False)
    assert usage == Usage(3, 4, 7) and usage.cached_tokens == 0
    assert b"prompt_tokens_details" not in encode_usage(usage)


def encode_usage(usage: Usage) -> bytes:
    import msgspec

    return msgspec.json.encode(usage)


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


# --- bodies the event builder cannot take apart: cut by the capture bound, or nested too deeply ------


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


# --- the model a request names ------------------------------------------------------------------


def test_model_is_the_requests_top_level_field_even_after_nested_ones() -> None:
    body = b'{"messages":[],"tools":[{"type":"function","function":{"parameters":{"properties":{"model":{"type":"string"}}}}}],"model":"gpt-4.1"}'
    assert request_model(body) == "gpt-4.1"


def test_model_of_a_truncated_request_is_found_by_its_first_match() -> None:
    assert request_model(b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "Hel') == "gpt-4o"


def test_model_of_a_multipart_audio_request_is_its_form_field() -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\n\r\n\xff\xfb\r\n--b--\r\n'
    assert request_model(body) == "whisper-1"


def test_a_deeply_nested_request_names_no_model() -> None:
    assert request_model(b'{"model":"gpt-4o","x":' + DEEP + b"}") is None
    assert request_model(b'{"x":' + DEEP + b',"model":"gpt-4o"}') is None
