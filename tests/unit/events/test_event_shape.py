"""EventShape checks a stored event without building it: Event's fields, the same verdicts on its scalars."""

from __future__ import annotations

import msgspec
import pytest

from llmproxy.events.model import Event, EventShape, check_event, encode_event
from tests.unit.dispatch.doubles import chat_event, rate_limited_event, stream_event


def test_the_shape_has_the_fields_of_event_in_the_same_order_with_the_same_defaults() -> None:
    event_fields = msgspec.structs.fields(Event)
    shape_fields = msgspec.structs.fields(EventShape)
    assert [f.name for f in shape_fields] == [f.name for f in event_fields]
    assert [f.required for f in shape_fields] == [f.required for f in event_fields]
    unbuilt = {"usage", "request_headers", "response_headers", "request_body", "response_body"}
    for shape_field, event_field in zip(shape_fields, event_fields, strict=True):
        if shape_field.name in unbuilt:
            assert shape_field.type is msgspec.Raw
        else:
            assert (shape_field.type, shape_field.default) == (event_field.type, event_field.default)


@pytest.mark.parametrize(
    "event", [chat_event(), stream_event(), rate_limited_event()], ids=["chat", "stream", "429"]
)
def test_an_encoded_event_passes_and_gives_its_id(event: Event) -> None:
    assert check_event(encode_event(event)) == event.id


@pytest.mark.parametrize(
    "change",
    [
        {"status": "200"},  # a scalar of the wrong type
        {"id": None},
        {"duration_ms": "fast"},
        {"stream": 1},
    ],
    ids=["status", "id", "duration", "stream"],
)
def test_a_wrong_scalar_is_refused_as_event_would_refuse_it(change: dict[str, object]) -> None:
    doc = msgspec.json.decode(encode_event(chat_event())) | change
    raw = msgspec.json.encode(doc)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=Event)
    with pytest.raises(msgspec.ValidationError):
        check_event(raw)


def test_a_missing_required_field_is_refused() -> None:
    doc = msgspec.json.decode(encode_event(chat_event()))
    del doc["started_at"]
    with pytest.raises(msgspec.ValidationError, match="started_at"):
        check_event(msgspec.json.encode(doc))


def test_malformed_json_and_invalid_utf8_in_a_body_are_refused() -> None:
    raw = encode_event(chat_event())
    with pytest.raises(msgspec.DecodeError):
        check_event(raw[:-1])
    body_at = raw.index(b'"response_body":"') + len(b'"response_body":"')
    with pytest.raises(UnicodeDecodeError):
        check_event(raw[:body_at] + b"\xff\xfe" + raw[body_at:])


@pytest.mark.parametrize(
    "change",
    [{"request_body": 5}, {"usage": "x"}, {"request_headers": [1]}],
    ids=["body", "usage", "headers"],
)
def test_headers_bodies_and_usage_are_only_checked_as_json_values(change: dict[str, object]) -> None:
    """The documented trade (README, "The event log holds the bytes the proxy stored"): Event refuses
    these, the shape lets them through, since only the proxy's own encoder writes the stream."""
    doc = msgspec.json.decode(encode_event(chat_event())) | change
    raw = msgspec.json.encode(doc)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=Event)
    assert check_event(raw) == doc["id"]
