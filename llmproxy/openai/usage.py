"""The model and token usage an exchange names: read from the client's request and the upstream's
response (JSON or SSE). Cheap enough for the loop: the usage chunk is among the last few SSE events,
and a request is decoded only for its top-level `model`. Counting tokens locally is llmproxy.openai.estimate.
"""

from __future__ import annotations

import re

import msgspec

from llmproxy.events.model import PromptTokensDetails, Usage
from llmproxy.openai.sse import data_payloads, data_payloads_backwards

__all__ = ("request_model", "response_model", "response_usage", "usage_in")

# a final usage chunk sits right before [DONE] (chat) or is the last event (responses API)
_TAIL_EVENTS = 16
_USAGE_KEY = b'"usage"'
_OBJECT_FOLLOWS = re.compile(rb"\s*:\s*\{")
_USAGE_KEYS_TRIED = 64  # "usage" keys looked at, from the end (SSE chunks say "usage":null)
_USAGE_BRACES_TRIED = 8  # a usage object nests one level (…_tokens_details): its end is a few braces on
_SNIFF = 4096  # bytes searched for the model when the request is not whole JSON
_MODEL_JSON = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')
_MODEL_FORM = re.compile(rb'name="model"\r?\n(?:[^\r\n]+\r?\n)*\r?\n([^\r\n]{1,256})')


class _Details(msgspec.Struct):
    cached_tokens: int | None = None


class _Counts(msgspec.Struct):
    prompt_tokens_details: _Details | None = None  # chat and completions: cached prompt tokens
    input_tokens_details: _Details | None = None  # responses API
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


class _RequestHead(msgspec.Struct):
    model: str | None = None


_payload = msgspec.json.Decoder(_Payload)
_counts = msgspec.json.Decoder(_Counts)
_request_head = msgspec.json.Decoder(_RequestHead)


def _usage(counts: _Counts | None) -> Usage | None:
    if counts is None:
        return None
    prompt = counts.prompt_tokens if counts.prompt_tokens is not None else counts.input_tokens
    completion = counts.completion_tokens if counts.completion_tokens is not None else counts.output_tokens
    if prompt is None and completion is None and counts.total_tokens is None:
        return None
    prompt, completion = prompt or 0, completion or 0
    total = counts.total_tokens if counts.total_tokens is not None else prompt + completion
    details = counts.prompt_tokens_details or counts.input_tokens_details
    cached = details.cached_tokens if details is not None else None
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        prompt_tokens_details=PromptTokensDetails(cached) if cached else None,
    )


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
    for n, data in enumerate(data_payloads_backwards(body)):
        if n >= _TAIL_EVENTS:
            break
        if b'"usage"' in data and (chunk := _decode(data)) is not None:
            if (found := _payload_usage(chunk)) is not None:
                return found
    return None


def response_model(body: bytes, stream: bool) -> str | None:
    """The model the upstream says answered: the JSON body's `model`, or the first SSE chunk's."""
    payloads = data_payloads(body) if stream else iter((body,))
    for n, data in enumerate(payloads):
        if n >= _TAIL_EVENTS:
            break
        if (payload := _decode(data)) is not None:
            model = payload.model or (payload.response.model if payload.response else None)
            if model:
                return model
    return None


def request_model(body: bytes) -> str | None:
    """The `model` a request names: its JSON field, or for a cut or odd body the first match near the start."""
    if body.lstrip()[:1] == b"{":
        try:
            return _request_head.decode(body).model
        except (msgspec.ValidationError, RecursionError):  # (nested ~1000 levels: which model is unknowable)
            return None
        except msgspec.DecodeError:
            pass
    head = body[:_SNIFF]
    found = _MODEL_JSON.search(head) or _MODEL_FORM.search(head)  # truncated JSON, or multipart (audio)
    return found.group(1).decode("utf-8", "replace").strip() if found else None
