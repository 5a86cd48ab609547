"""OpenAI streams (server-sent events): the `data:` payloads, JSON bounded in depth, and the
non-stream response rebuilt from the chunks (chat deltas, tool call fragments, legacy completions,
Responses API `response.completed`). Pure: no I/O.

Two readings of the same framing: line by line on bytes (lazy, forwards or from the end; the proxy
reads usage on the loop with it) and event by event on text (multi-line `data:` joined; backends).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

import msgspec

__all__ = (
    "MAX_JSON_DEPTH",
    "data_payloads",
    "data_payloads_backwards",
    "decode_json",
    "json_depth",
    "merge_chunks",
    "sse_data",
)

_TERMINAL_RESPONSE_EVENTS = ("response.completed", "response.failed", "response.incomplete")
# JSON nested deeper than this is read as not JSON: decoding it, re-encoding it inside a backend's
# payload, or parsing that payload on the backend's server may each hit a recursion limit (~1000).
# Real requests nest far less: a structured-output schema of 40 objects is 80 levels.
MAX_JSON_DEPTH = 128
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[{]}")


# --- framing, line by line on bytes ----------------------------------------------------------------


def _data(line: bytes) -> bytes | None:
    if not line.startswith(b"data:"):
        return None
    data = line[6:] if line[5:6] == b" " else line[5:]
    return None if not data or data == b"[DONE]" else data


def data_payloads(body: bytes) -> Iterator[bytes]:
    """The `data:` payloads of an SSE body, in order ([DONE] left out); lazily, line by line."""
    start, size = 0, len(body)
    while start < size:
        end = body.find(b"\n", start)
        end = size if end < 0 else end
        data = _data(body[start:end].rstrip(b"\r"))
        if data is not None:
            yield data
        start = end + 1


def data_payloads_backwards(body: bytes) -> Iterator[bytes]:
    """The `data:` payloads of an SSE body from the last one back: a final usage chunk is read first."""
    end = len(body)
    while (pos := body.rfind(b"data:", 0, end)) >= 0:
        if pos == 0 or body[pos - 1] in b"\r\n":
            data = _data(body[pos:end].splitlines()[0])
            if data is not None:
                yield data
        end = pos


# --- events on text, JSON bounded in depth ---------------------------------------------------------


def json_depth(data: bytes) -> int:
    """How deeply JSON text nests its arrays and objects (brackets inside strings left out)."""
    steps = _JSON_STRING.sub(b"", data).translate(_BRACKETS, _NOT_BRACKETS)
    return max(accumulate(memoryview(steps).cast("b")), default=0)


def decode_json(data: bytes) -> Any:
    """The JSON value of ``data``; msgspec.DecodeError for what is not JSON or nests past MAX_JSON_DEPTH."""
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH and json_depth(data) > MAX_JSON_DEPTH:
        raise msgspec.DecodeError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return msgspec.json.decode(data)


def sse_data(text: str) -> list[Any]:
    """The JSON payloads of an SSE stream's `data:` fields, in order; `[DONE]` and junk skipped."""
    payloads: list[Any] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if not data or data[0].startswith("[DONE]"):
            continue
        try:
            payloads.append(decode_json("\n".join(data).encode()))
        except msgspec.DecodeError:
            continue  # a chunk cut by the capture limit, not JSON, or nested too deeply
    return payloads


# --- the response a stream adds up to --------------------------------------------------------------


def merge_chunks(chunks: list[Any]) -> dict[str, Any]:
    """A non-stream response rebuilt from stream chunks (chat, legacy completion or Responses API)."""
    for chunk in reversed(chunks):
        if isinstance(chunk, dict) and chunk.get("type") in _TERMINAL_RESPONSE_EVENTS:
            response = chunk.get("response")
            return response if isinstance(response, dict) else {}
    merged: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    calls: dict[tuple[int, int], dict[str, Any]] = {}
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        _merge_envelope(merged, chunk)
        legacy = chunk.get("object") == "text_completion"
        for part in chunk.get("choices") or ():
            index = part.get("index", 0)
            choice = choices.get(index)
            if choice is None:
                choice = {"index": index, "finish_reason": None}
                choice.update({"text": ""} if legacy else {"message": {"role": "assistant", "content": None}})
                choices[index] = choice
            if part.get("finish_reason"):
                choice["finish_reason"] = part["finish_reason"]
            if legacy:
                choice["text"] += part.get("text") or ""
            else:
                _merge_delta(choice["message"], part.get("delta") or {}, calls, index)
    merged["object"] = "text_completion" if any("text" in c for c in choices.values()) else "chat.completion"
    merged["choices"] = [choices[i] for i in sorted(choices)]
    return merged


def _merge_envelope(merged: dict[str, Any], chunk: dict[str, Any]) -> None:
    """A chunk's response-level fields: the first id/created/model/fingerprint, the last error and usage."""
    for key in ("id", "created", "model", "system_fingerprint"):
        if key in chunk and key not in merged:
            merged[key] = chunk[key]
    if chunk.get("error") is not None:
        merged["error"] = chunk["error"]
    if isinstance(chunk.get("usage"), dict):
        merged["usage"] = chunk["usage"]


def _merge_delta(
    message: dict[str, Any], delta: dict[str, Any], calls: dict[tuple[int, int], dict[str, Any]], choice: int
) -> None:
    if delta.get("role"):
        message["role"] = delta["role"]
    for field in ("content", "refusal"):
        if delta.get(field) is not None:
            message[field] = (message.get(field) or "") + delta[field]
    for fragment in delta.get("tool_calls") or ():
        key = (choice, fragment.get("index", 0))
        call = calls.get(key)
        if call is None:
            call = calls[key] = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            message.setdefault("tool_calls", []).append(call)
        call["id"] = fragment.get("id") or call["id"]
        call["type"] = fragment.get("type") or call["type"]
        function = fragment.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""
