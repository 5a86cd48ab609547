"""Decoding management requests: a JSON body or a query, once, into its Struct; errors name the field.

400 ``invalid_json`` for a body that is not JSON, 422 ``invalid_field`` (``error.param`` the field's path)
for one that does not fit; the regexes msgspec would quote become what they stand for.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from llmproxy.errors import ProxyError, Refusal
from llmproxy.manage.checks import check_values

__all__ = ("PATTERN_MEANINGS", "decode_body", "decode_query", "field_of")

_FIELD_NAMED = re.compile(r"(?:unknown|required) field `([^`]+)`")
_AT_PATH = re.compile(r" - at `\$(.*)`$")
# msgspec quotes the regex a string failed; people would rather read what it stands for
PATTERN_MEANINGS: dict[str, str] = {}  # regex -> what it stands for; filled by the schema modules
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}
T = TypeVar("T")


def field_of(error: msgspec.ValidationError) -> str | None:
    """The field a validation error is about, as a dotted path (``max_requests``, ``a.b[0]``)."""
    message = str(error)
    at = _AT_PATH.search(message)
    path = at.group(1).lstrip(".") if at else ""
    named = _FIELD_NAMED.search(message)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return path or None


def _invalid(error: msgspec.ValidationError) -> ProxyError:
    message = str(error)
    for pattern, meaning in PATTERN_MEANINGS.items():
        message = message.replace(f"`str` matching regex {pattern!r}", meaning)
    return ProxyError(Refusal.INVALID_FIELD, message, param=field_of(error))


def decode_body(body: bytes, kind: type[T]) -> T:
    """Decode a request body: 400 ``invalid_json`` if it isn't JSON, 422 ``invalid_field`` naming
    the field if it doesn't fit ``kind``."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        # parse the whole text first: the typed decoder stops at the first field that does not fit,
        # and would call '{"a": 1}garbage' an unknown field instead of what it is, not JSON
        msgspec.json.decode(body)
        value: T = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProxyError(Refusal.INVALID_JSON, f"Request body is not valid JSON: {exc}") from None
    check_values(value)
    return value


def decode_query(query: Any, kind: type[T]) -> T:
    """Convert query parameters (first value of each) into ``kind``, strings coerced; 422 if not."""
    values = {key: query.get(key) for key in query.keys()}
    try:
        value = msgspec.convert(values, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    check_values(value)
    return value
