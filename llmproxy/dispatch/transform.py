"""Read an OpenAI exchange back out of an Event: what was asked, what came back, usage and errors.

Shared by the HTTP backends; streams are rebuilt by llmproxy.openai.sse. Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from llmproxy.events.model import Event
from llmproxy.openai.kinds import EndpointKind, endpoint_kind
from llmproxy.openai.sse import decode_json, merge_chunks, sse_data

__all__ = (
    "LlmCall",
    "body_bytes",
    "ended_epoch",
    "flat_metadata",
    "iso_ms",
    "read_call",
    "run_uuid",
    "started_epoch",
)

# Request fields that are the call's input or identity, not a model parameter.
_NOT_PARAMS = frozenset({"messages", "prompt", "input", "model", "user", "stream_options"})
_RUN_NAMESPACE = uuid.UUID("6f6d1d3c-52a4-4c41-9c1b-6c6c6d70726f")


class LlmCall(msgspec.Struct, kw_only=True):
    """One proxied call as an observability backend sees it."""

    kind: EndpointKind | None  # None: not a model API
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
    kind = endpoint_kind(event.path)
    req = request or {}
    usage = response.get("usage") if response else None
    if event.usage is not None and (event.response_body_truncated or not isinstance(usage, dict)):
        usage = msgspec.to_builtins(event.usage)  # read from the whole response, not the captured part
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


def _output(kind: EndpointKind | None, response: dict[str, Any]) -> Any:
    if kind is EndpointKind.EMBEDDINGS:
        data = response.get("data") or []
        return [{"index": d.get("index"), "dimensions": len(d.get("embedding") or ())} for d in data]
    if kind is EndpointKind.RESPONSES:
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


def _json_object(data: bytes) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        value = decode_json(data)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def flat_metadata(event: Event, prefix: str = "") -> dict[str, str | int | float | bool]:
    """The token's metadata with scalar values (nested ones as JSON text), keys prefixed: what backends
    that take only flat metadata (Lunary, Helicone's properties) can carry."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in (event.metadata or {}).items():
        if isinstance(value, str | int | float | bool):
            flat[prefix + key] = value
        elif value is not None:
            flat[prefix + key] = msgspec.json.encode(value).decode()
    return flat
