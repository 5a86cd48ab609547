"""The Event of SPEC §6: one per proxied request, msgspec-encoded (JSON on the wire and on disk)."""

from __future__ import annotations

import msgspec

__all__ = ("Event", "Usage", "decode_event", "encode_event", "encoder")


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Event(msgspec.Struct, kw_only=True):
    id: str  # uuid; unique per event, stable across redeliveries (dedupe key)
    request_id: str
    project_id: str
    token_id: str
    method: str
    path: str
    query: str = ""
    status: int
    started_at: str  # RFC 3339, microseconds, UTC
    duration_ms: float
    ttfb_ms: float | None = None
    stream: bool = False
    model: str | None = None
    usage: Usage | None = None
    usage_source: str | None = None  # "response" | "estimated"
    request_headers: dict[str, str] = {}
    response_headers: dict[str, str] = {}
    request_body: str = ""
    request_body_truncated: bool = False
    response_body: str = ""
    response_body_truncated: bool = False
    body_encoding: str = "utf-8"  # "utf-8" | "base64"
    error: str | None = None


encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return encoder.encode(event)


def decode_event(data: bytes | str) -> Event:
    return _decoder.decode(data)
