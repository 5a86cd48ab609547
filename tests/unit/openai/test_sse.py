"""OpenAI streams read back: the `data:` payloads of SSE text, and the response the chunks add up to."""

from __future__ import annotations

from llmproxy.openai.sse import merge_chunks, sse_data
from tests.unit.dispatch.doubles import STREAM_CHUNKS, sse


def test_sse_parsing_accepts_data_without_a_space_and_crlf_and_skips_done_and_cut_chunks() -> None:
    text = sse(STREAM_CHUNKS[:2], space=False).replace("\n", "\r\n") + 'data: {"cut": tr'
    assert sse_data(text) == STREAM_CHUNKS[:2]


def test_several_choices_are_merged_per_index() -> None:
    chunks = [
        {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 1, "delta": {"content": "B"}}]},
        {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "A"}}]},
        {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 1, "delta": {"content": "b"}}]},
    ]
    merged = merge_chunks(chunks)
    assert [c["message"]["content"] for c in merged["choices"]] == ["A", "Bb"]
