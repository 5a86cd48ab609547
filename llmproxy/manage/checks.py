"""What a decoded management value must also be that its msgspec types cannot say, checked by field.

An ``upstream_base_url`` must be one the proxy can dial, every instant must exist in UTC (both
stores keep UTC), and a token's ``metadata`` must stay small. Refused here with 422 naming the field, such values never become a 500 later.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from llmproxy.config_values import upstream_url
from llmproxy.errors import ProxyError, Refusal

__all__ = ("MAX_METADATA_BYTES", "check_values")

MAX_METADATA_BYTES = 4096  # a token's metadata, encoded: it rides along in every event of the token


def check_values(value: object) -> None:
    """422 ``invalid_field`` naming the first field of the Struct ``value`` that fails a check."""
    for name in getattr(value, "__struct_fields__", ()):
        field = getattr(value, name)
        if isinstance(field, datetime):
            _check_instant(name, field)
        elif name == "upstream_base_url" and isinstance(field, str):
            _check_upstream_url(field)
        elif name == "metadata" and isinstance(field, dict):
            _check_metadata(field)


def _check_metadata(metadata: dict[str, object]) -> None:
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
