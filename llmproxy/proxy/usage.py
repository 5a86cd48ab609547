"""Token usage of an exchange: read from the upstream's response (JSON or SSE), else estimated locally.

Reading is cheap and runs on the loop (the usage chunk is among the last few SSE events); estimating
parses the whole body and runs the tokenizer, so callers run `estimate_usage` off the loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import msgspec

from llmproxy.events.model import Usage
from llmproxy.proxy.tokencount import TokenCounter, spoken_text

__all__ = ("endpoint_kind", "estimate_usage", "response_model", "response_usage", "usage_in")

# a final usage chunk sits right before [DONE] (chat) or is the last event (responses API)
_TAIL_EVENTS = 16
_USAGE_KEY = b'"usage"'
_OBJECT_FOLLOWS = re.compile(rb"\s*:\s*\{")
_USAGE_KEYS_TRIED = 64  # "usage" keys looked at, from the end (SSE chunks say "usage":null)
_USAGE_BRACES_TRIED = 8  # a usage object nests one level (…_tokens_details): its end is a few braces on


class _Counts(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    input_tokens: int | None = None  # responses API
    output_tokens: int | None = None


class _ResponseObject(msgspec.Struct):
    usage: _Counts | None = None
    model: str | None = None


class _Payload(msgspec.Struct):
    """What usage reading needs from a JSON body or an SSE chunk; every other field is skipped."""

    usage: _Counts | None = None
    model: str | None = None
    response: _ResponseObject | None = None  # responses API stream events carry the response here


_payload = msgspec.json.Decoder(_Payload)
_counts = msgspec.json.Decoder(_Counts)


def endpoint_kind(path: str) -> str | None:
    """Which token-consuming API a path is ("chat", "completions", "responses", "embeddings"), if any."""
    path = path.rstrip("/")
    for suffix, kind in (
        ("/chat/completions", "chat"),
        ("/completions", "completions"),
        ("/responses", "responses"),
        ("/embeddings", "embeddings"),
    ):
        if path.endswith(suffix):
            return kind
    return None


def _usage(counts: _Counts | None) -> Usage | None:
    if counts is None:
        return None
    prompt = counts.prompt_tokens if counts.prompt_tokens is not None else counts.input_tokens
    completion = counts.completion_tokens if counts.completion_tokens is not None else counts.output_tokens
    if prompt is None and completion is None and counts.total_tokens is None:
        return None
    prompt, completion = prompt or 0, completion or 0
    total = counts.total_tokens if counts.total_tokens is not None else prompt + completion
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)


def _decode(data: bytes) -> _Payload | None:
    try:
        return _payload.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):  # (nested ~1000 levels deep)
        return None


def usage_in(text: bytes) -> Usage | None:
    """The last `"usage": {...}` object in a fragment of JSON or SSE text: the tail of a body past the
    capture bound, or a body nested too deeply to decode. A key is found only outside strings (a quote
    inside a JSON string is escaped), so only the upstream itself can put one there."""
    end = len(text)
    for _ in range(_USAGE_KEYS_TRIED):
        key = text.rfind(_USAGE_KEY, 0, end)
        if key < 0:
            return None
        end = key
        follows = _OBJECT_FOLLOWS.match(text, key + len(_USAGE_KEY))
        if follows is None or (key > 0 and text[key - 1] == 0x5C):  # not an object, or \"usage\" in a string
            continue
        start = close = follows.end() - 1
        for _ in range(_USAGE_BRACES_TRIED):
            close = text.find(b"}", close + 1)
            if close < 0:
                break
            try:
                counts = _counts.decode(text[start : close + 1])
            except msgspec.DecodeError:  # (ValidationError included) not the object's end yet, or not usage
                continue
            if (found := _usage(counts)) is not None:
                return found
            break
    return None


def _payload_usage(payload: _Payload) -> Usage | None:
    found = _usage(payload.usage)
    if found is None and payload.response is not None:
        found = _usage(payload.response.usage)
    return found


def _sse_data(line: bytes) -> bytes | None:
    if not line.startswith(b"data:"):
        return None
    data = line[6:] if line[5:6] == b" " else line[5:]
    return None if not data or data == b"[DONE]" else data


def _sse_payloads(body: bytes) -> Iterator[bytes]:
    """The `data:` payloads of an SSE body, in order ([DONE] left out); lazily, line by line."""
    start, size = 0, len(body)
    while start < size:
        end = body.find(b"\n", start)
        end = size if end < 0 else end
        data = _sse_data(body[start:end].rstrip(b"\r"))
        if data is not None:
            yield data
        start = end + 1


def _sse_payloads_backwards(body: bytes) -> Iterator[bytes]:
    end = len(body)
    while (pos := body.rfind(b"data:", 0, end)) >= 0:
        if pos == 0 or body[pos - 1] in b"\r\n":
            data = _sse_data(body[pos:end].splitlines()[0])
            if data is not None:
                yield data
        end = pos


def response_usage(body: bytes, stream: bool) -> Usage | None:
    """The usage the upstream reported: the JSON body's `usage`, or the last SSE chunk carrying one."""
    if not stream:  # msgspec skips what it does not need faster than a substring search would
        try:
            payload = _payload.decode(body)
        except RecursionError:  # too deeply nested to decode; its usage can still be read
            return usage_in(body)
        except msgspec.DecodeError:
            return None
        return _payload_usage(payload)
    for n, data in enumerate(_sse_payloads_backwards(body)):
        if n >= _TAIL_EVENTS:
            break
        if b'"usage"' in data and (chunk := _decode(data)) is not None:
            if (found := _payload_usage(chunk)) is not None:
                return found
    return None


def response_model(body: bytes, stream: bool) -> str | None:
    """The model the upstream says answered: the JSON body's `model`, or the first SSE chunk's."""
    payloads = _sse_payloads(body) if stream else iter((body,))
    for n, data in enumerate(payloads):
        if n >= _TAIL_EVENTS:
            break
        if (payload := _decode(data)) is not None:
            model = payload.model or (payload.response.model if payload.response else None)
            if model:
                return model
    return None


# --- estimation (off the loop) -------------------------------------------------------------------

# output keys holding no text the model wrote (base64 audio, ids, roles)
_SILENT_KEYS = frozenset({"type", "id", "index", "role", "annotations", "audio", "logprobs", "obfuscation"})
_RESPONSES_OUTPUT_DELTAS = frozenset(
    {"response.output_text.delta", "response.function_call_arguments.delta", "response.refusal.delta"}
)


def _json(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):  # not JSON, cut by the capture bound, or nested too deeply
        return None


def _text(value: Any) -> str:
    """Text an output value carries: strings, text parts, tool names and arguments (ids and types skipped)."""
    return spoken_text(value, _SILENT_KEYS)


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) for v in value)


def _input_tokens(value: Any, model: str | None, counter: TokenCounter) -> int:
    """Completions `prompt` / embeddings `input`: a string, token ids, or a list of either (the text of
    anything else counted, however nested)."""
    total = 0
    for item in value if isinstance(value, list) and not _token_ids(value) else (value,):
        if _token_ids(item):
            total += len(item)
        elif isinstance(item, str | list | dict):
            total += counter.count_text(spoken_text(item, frozenset()), model)
    return total


def _prompt_tokens(kind: str, request: Any, raw: bytes, model: str | None, counter: TokenCounter) -> int:
    if not isinstance(request, dict):  # truncated or not JSON: count what was captured
        return counter.count_text(raw.decode("utf-8", "replace"), model)
    if kind == "chat":
        messages = request.get("messages")
        return counter.count_chat_prompt(messages, model) if isinstance(messages, list) else 0
    if kind == "responses":
        items = request.get("input")
        messages = [{"role": "user", "content": items}] if isinstance(items, str) else []
        messages += items if isinstance(items, list) else []
        if isinstance(request.get("instructions"), str):
            messages.insert(0, {"role": "system", "content": request["instructions"]})
        return counter.count_chat_prompt(messages, model)
    return _input_tokens(request.get("prompt" if kind == "completions" else "input"), model, counter)


def _json_output_texts(kind: str, response: dict[str, Any]) -> list[str]:
    if kind == "responses":
        return [
            _text(item.get("content")) + _text(item.get("name")) + _text(item.get("arguments"))
            for item in response.get("output") or []
            if isinstance(item, dict) and item.get("type") != "reasoning"
        ]
    texts = []
    for choice in response.get("choices") or []:
        if isinstance(choice, dict):
            texts.append(_text(choice.get("text")) + _text(choice.get("message")))
    return texts


def _sse_output_texts(kind: str, body: bytes) -> list[str]:
    pieces: dict[Any, list[str]] = {}
    for data in _sse_payloads(body):
        chunk = _json(data)
        if not isinstance(chunk, dict):
            continue
        if kind == "responses":
            if chunk.get("type") in _RESPONSES_OUTPUT_DELTAS and isinstance(chunk.get("delta"), str):
                key = (chunk.get("output_index"), chunk.get("type"))
                pieces.setdefault(key, []).append(chunk["delta"])
            continue
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict):
                text = _text(choice.get("text")) + _text(choice.get("delta"))
                pieces.setdefault(choice.get("index"), []).append(text)
    return ["".join(parts) for parts in pieces.values()]


def estimate_usage(
    path: str,
    request_body: bytes,
    response_body: bytes,
    stream: bool,
    model: str | None,
    counter: TokenCounter,
) -> Usage | None:
    """Local token counts for a token-consuming endpoint (None for any other); decoded bodies in."""
    kind = endpoint_kind(path)
    if kind is None:
        return None
    prompt = _prompt_tokens(kind, _json(request_body), request_body, model, counter)
    completion = 0
    if kind != "embeddings":
        if stream:
            texts = _sse_output_texts(kind, response_body)
        else:
            response = _json(response_body)
            if isinstance(response, dict):
                texts = _json_output_texts(kind, response)
            else:  # truncated: count what was captured
                texts = [response_body.decode("utf-8", "replace")]
        completion = counter.count_texts(texts, model)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
