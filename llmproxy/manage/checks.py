"""What a decoded management value must also be that its msgspec types cannot say, checked by field.

An ``upstream_base_url`` must be one the proxy can dial, every instant must exist in UTC (both
stores keep UTC), no text may hold NUL (PostgreSQL text cannot), and a token's ``metadata`` must stay
small and shallow. Refused here with 422 naming the field, such values never become a 500 later.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from llmproxy.config_values import upstream_url
from llmproxy.errors import ProxyError, Refusal

__all__ = ("MAX_METADATA_BYTES", "MAX_METADATA_DEPTH", "check_values")

MAX_METADATA_BYTES = 4096  # a token's metadata, encoded: it rides along in every event of the token
# objects and arrays inside one another: events, dispatch payloads and their encoders nest it deeper still
MAX_METADATA_DEPTH = 16


def check_values(value: object) -> None:
    """422 ``invalid_field`` naming the first field of the Struct ``value`` that fails a check."""
    for name in getattr(value, "__struct_fields__", ()):
        field = getattr(value, name)
        if _has_nul(field):
            raise ProxyError(Refusal.INVALID_FIELD, f"{name}: text may not contain NUL (\\u0000)", param=name)
        if isinstance(field, datetime):
            _check_instant(name, field)
        elif name == "upstream_base_url" and isinstance(field, str):
            _check_upstream_url(field)
        elif name == "metadata" and isinstance(field, dict):
            _check_metadata(field)


def _has_nul(value: object) -> bool:
    """Whether a string, or any string in a list or object (keys too, however deep), holds NUL."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _depth(value: object) -> int:
    """How many objects and arrays are nested at the deepest point of ``value`` (no recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, list | dict):
            deepest = max(deepest, level)
            stack.extend((part, level + 1) for part in (item.values() if isinstance(item, dict) else item))
    return deepest


def _check_metadata(metadata: dict[str, object]) -> None:
    depth = _depth(metadata)
    if depth > MAX_METADATA_DEPTH:
        raise ProxyError(
            Refusal.INVALID_FIELD,
            f"metadata: {depth} levels of objects and arrays, at most {MAX_METADATA_DEPTH}",
            param="metadata",
        )
    size = len(msgspec.json.encode(metadata))
    if size > MAX_METADATA_BYTES:
        raise ProxyError(
            Refusal.INVALID_FIELD,
            f"metadata: {size} bytes as JSON, at most {MAX_METADATA_BYTES}",
            param="metadata",
        )


def _check_instant(name: str, moment: datetime) -> None:
    try:
        moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is still year 0 in UTC
        raise ProxyError(
            Refusal.INVALID_FIELD,
            f"{name}: {moment.isoformat()} is outside the years 1-9999 once in UTC",
            param=name,
        ) from None


def _check_upstream_url(url: str) -> None:
    try:
        upstream_url(url)
    except ValueError as exc:
        raise ProxyError(
            Refusal.INVALID_FIELD, f"upstream_base_url: {exc}", param="upstream_base_url"
        ) from None
