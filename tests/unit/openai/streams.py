"""Bodies for the OpenAI format tests: SSE streams, chat chunks, text of a known token count."""

from __future__ import annotations

import json

FOX = "The quick brown fox jumps over the lazy dog."  # 10 tokens in cl100k_base and o200k_base
DEEP = b"[" * 5000 + b"]" * 5000  # nested past any recursion limit


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
