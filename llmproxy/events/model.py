"""The Event of SPEC §6: one per proxied request, msgspec-encoded (JSON on the wire and on disk)."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = (
    "Event",
    "EventShape",
    "PromptTokensDetails",
    "Usage",
    "check_event",
    "decode_event",
    "encode_event",
    "encoder",
)


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int = 0


class Usage(msgspec.Struct, omit_defaults=True):
    """Token counts as OpenAI reports them; ``prompt_tokens_details`` only when cached tokens were reported."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None

    @property
    def cached_tokens(self) -> int:
        details = self.prompt_tokens_details
        return 0 if details is None else details.cached_tokens


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
    metadata: dict[str, Any] | None = None  # the token's metadata (issue 17), as set through the API


encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)

# What a backend that writes the stored bytes as they are (``file``) checks instead of decoding: Event's
# own fields, the scalars typed as there, usage, headers and bodies only parsed as JSON values (never
# built into Python objects): a third of the decoding cost, none of the re-encoding.
_UNBUILT = ("usage", "request_headers", "response_headers", "request_body", "response_body")


def _shape_field(field: msgspec.structs.FieldInfo) -> tuple[str, Any] | tuple[str, Any, Any]:
    if field.name in _UNBUILT:
        default = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
        return (field.name, msgspec.Raw, msgspec.Raw(encoder.encode(default)))
    return (field.name, field.type) if field.required else (field.name, field.type, field.default)


EventShape = msgspec.defstruct(
    "EventShape", [_shape_field(f) for f in msgspec.structs.fields(Event)], kw_only=True, module=__name__
)
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
    if not data.isascii():  # ASCII is UTF-8; raw JSON values are not checked for UTF-8 by msgspec
        data.decode()  # a log line must be text
    event_id: str = shape.id  # type: ignore[attr-defined]  # msgspec types a defstruct class as a bare Struct
    return event_id
