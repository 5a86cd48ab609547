"""The Event of SPEC §6: one per proxied request, msgspec-encoded (JSON on the wire and on disk)."""

from __future__ import annotations

import msgspec

__all__ = ("Event", "EventShape", "Usage", "check_event", "decode_event", "encode_event", "encoder")


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


class EventShape(msgspec.Struct, kw_only=True):
    """An Event checked without being built: the scalar fields typed as in ``Event`` (same names, same
    order, tests/unit/events/test_model.py), usage, headers and bodies only parsed as JSON values.

    What a backend that writes the stored bytes as they are (``file``) needs: a third of the decoding
    cost, none of the re-encoding.
    """

    id: str
    request_id: str
    project_id: str
    token_id: str
    method: str
    path: str
    query: str = ""
    status: int
    started_at: str
    duration_ms: float
    ttfb_ms: float | None = None
    stream: bool = False
    model: str | None = None
    usage: msgspec.Raw = msgspec.Raw(b"null")
    usage_source: str | None = None
    request_headers: msgspec.Raw = msgspec.Raw(b"{}")
    response_headers: msgspec.Raw = msgspec.Raw(b"{}")
    request_body: msgspec.Raw = msgspec.Raw(b'""')
    request_body_truncated: bool = False
    response_body: msgspec.Raw = msgspec.Raw(b'""')
    response_body_truncated: bool = False
    body_encoding: str = "utf-8"
    error: str | None = None


encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)
_shape_decoder = msgspec.json.Decoder(EventShape)


def encode_event(event: Event) -> bytes:
    return encoder.encode(event)


def decode_event(data: bytes | str) -> Event:
    return _decoder.decode(data)


def check_event(data: bytes) -> str:
    """The id of the event ``data`` encodes, checked as an ``EventShape`` and as UTF-8 throughout.

    Raises msgspec.DecodeError (ValidationError included) or UnicodeDecodeError.
    """
    shape = _shape_decoder.decode(data)
    data.decode()  # raw JSON values are not checked for UTF-8 by msgspec: a log line must be text
    return shape.id
