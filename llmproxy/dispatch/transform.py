"""Read an OpenAI exchange back out of an Event: what was asked, what came back, usage and errors.

Shared by the HTTP backends. Streams are rebuilt from the captured SSE text (chat deltas, tool
call fragments, legacy completions, Responses API `response.completed`). Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

import msgspec

from llmproxy.events.model import Event

__all__ = (
    "MAX_JSON_DEPTH",
    "LlmCall",
    "body_bytes",
    "ended_epoch",
    "iso_ms",
    "json_depth",
    "merge_chunks",
    "read_call",
    "run_uuid",
    "sse_data",
    "started_epoch",
)

# Request fields that are the call's input or identity, not a model parameter.
_NOT_PARAMS = frozenset({"messages", "prompt", "input", "model", "user", "stream_options"})
_TERMINAL_RESPONSE_EVENTS = ("response.completed", "response.failed", "response.incomplete")
_RUN_NAMESPACE = uuid.UUID("6f6d1d3c-52a4-4c41-9c1b-6c6c6d70726f")
# JSON nested deeper than this is read as not JSON: decoding it, re-encoding it inside a backend's
# payload, or parsing that payload on the backend's server may each hit a recursion limit (~1000).
# Real requests nest far less: a structured-output schema of 40 objects is 80 levels.
MAX_JSON_DEPTH = 128
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[{]}")


class LlmCall(msgspec.Struct, kw_only=True):
    """One proxied call as an observability backend sees it."""

    kind: str  # "chat" | "completion" | "responses" | "embeddings" | "other"
    model: str | None
    request: dict[str, Any] | None  # the client's JSON body, if it was a JSON object
    response: dict[str, Any] | None  # the upstream JSON body, or rebuilt from the stream
    chunks: list[Any]  # parsed SSE data payloads in order (streams only)
    input: Any
    params: dict[str, Any]
    output: Any  # the assistant message (a list of them when n > 1)
    usage: dict[str, Any] | None  # upstream usage object, else the event's (maybe estimated)
    error: str | None


def read_call(event: Event) -> LlmCall:
    request = _json_object(body_bytes(event.request_body, event.body_encoding))
    chunks: list[Any] = []
    if event.stream:
        chunks = sse_data(body_bytes(event.response_body, event.body_encoding).decode("utf-8", "replace"))
        response: dict[str, Any] | None = merge_chunks(chunks) if chunks else None
    else:
        response = _json_object(body_bytes(event.response_body, event.body_encoding))
    kind = _kind(event.path)
    req = request or {}
    usage = response.get("usage") if response else None
    if event.usage is not None and (event.response_body_truncated or not isinstance(usage, dict)):
        usage = msgspec.structs.asdict(event.usage)  # read from the whole response, not the captured part
    return LlmCall(
        kind=kind,
        model=event.model or _str(req.get("model")) or _str((response or {}).get("model")),
        request=request,
        response=response,
        chunks=chunks,
        input=req.get("messages", req.get("prompt", req.get("input"))),
        params={k: v for k, v in req.items() if k not in _NOT_PARAMS},
        output=_output(kind, response) if response and event.status < 400 else None,
        usage=usage,
        error=_error(event, response),
    )


def body_bytes(text: str, encoding: str) -> bytes:
    if encoding == "base64":
        try:
            return base64.b64decode(text)
        except (binascii.Error, ValueError):
            return b""
    return text.encode("utf-8")


def sse_data(text: str) -> list[Any]:
    """The JSON payloads of an SSE stream's `data:` fields, in order; `[DONE]` and junk skipped."""
    payloads: list[Any] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if not data or data[0].startswith("[DONE]"):
            continue
        try:
            payloads.append(_decode("\n".join(data).encode()))
        except msgspec.DecodeError:
            continue  # a chunk cut by the capture limit, not JSON, or nested too deeply
    return payloads


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


def _output(kind: str, response: dict[str, Any]) -> Any:
    if kind == "embeddings":
        data = response.get("data") or []
        return [{"index": d.get("index"), "dimensions": len(d.get("embedding") or ())} for d in data]
    if kind == "responses":
        return {"role": "assistant", "content": _responses_text(response)}
    answers = []
    for choice in response.get("choices") or ():
        if "message" in choice:
            answers.append(choice["message"])
        elif "text" in choice:
            answers.append({"role": "assistant", "content": choice["text"]})
    if not answers:
        return None
    return answers[0] if len(answers) == 1 else answers


def _responses_text(response: dict[str, Any]) -> str:
    if isinstance(response.get("output_text"), str):
        return str(response["output_text"])
    texts = [
        part.get("text", "")
        for item in response.get("output") or ()
        if item.get("type") == "message"
        for part in item.get("content") or ()
        if part.get("type") == "output_text"
    ]
    return "".join(texts)


def _error(event: Event, response: dict[str, Any] | None) -> str | None:
    """What went wrong, as one line: proxy error, upstream error body, or a mid-stream error."""
    detail = (response or {}).get("error")
    message = detail.get("message") if isinstance(detail, dict) else detail
    if event.error:
        return f"{event.error}: {message}" if message else event.error
    if event.status >= 400:
        if not message:
            text = body_bytes(event.response_body, event.body_encoding)[:500].decode("utf-8", "replace")
            message = text.strip() or "no body"
        return f"{event.status}: {message}"
    return str(message) if message else None


def started_epoch(event: Event) -> float:
    started = datetime.fromisoformat(event.started_at)
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    return started.timestamp()


def ended_epoch(event: Event) -> float:
    return started_epoch(event) + max(0.0, event.duration_ms) / 1000.0


def iso_ms(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds, as JavaScript's Date.toISOString() writes it."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_uuid(event: Event) -> str:
    """A canonical UUID for the event, stable across redeliveries (backends dedupe on it)."""
    try:
        return str(uuid.UUID(event.id))
    except ValueError:
        return str(uuid.uuid5(_RUN_NAMESPACE, event.id))


def _kind(path: str) -> str:
    path = path.rstrip("/")
    for suffix, kind in (
        ("/chat/completions", "chat"),
        ("/completions", "completion"),
        ("/responses", "responses"),
        ("/embeddings", "embeddings"),
    ):
        if path.endswith(suffix):
            return kind
    return "other"


def json_depth(data: bytes) -> int:
    """How deeply JSON text nests its arrays and objects (brackets inside strings left out)."""
    steps = _JSON_STRING.sub(b"", data).translate(_BRACKETS, _NOT_BRACKETS)
    return max(accumulate(memoryview(steps).cast("b")), default=0)


def _decode(data: bytes) -> Any:
    """The JSON value of ``data``; msgspec.DecodeError for what is not JSON or nests past MAX_JSON_DEPTH."""
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH and json_depth(data) > MAX_JSON_DEPTH:
        raise msgspec.DecodeError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return msgspec.json.decode(data)


def _json_object(data: bytes) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        value = _decode(data)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
