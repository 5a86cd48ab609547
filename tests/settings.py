"""Changed copies of the frozen ``Settings`` (or of any section) for tests:
``with_changes(s, upstream={"base_url": url})``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

__all__ = ("with_changes",)

S = TypeVar("S", bound=msgspec.Struct)


def with_changes(settings: S, **changes: Any) -> S:
    """A copy of ``settings``: ``section={field: value}`` replaces fields of that section, ``name=value``
    a top-level field (``metrics_enabled=False``, or a ``BusSettings``' ``kind="redis"``); the sections
    are frozen, so tests cannot setattr."""
    fields: dict[str, Any] = {}
    for name, value in changes.items():
        current = getattr(settings, name)
        if isinstance(value, Mapping) and isinstance(current, msgspec.Struct):
            value = msgspec.structs.replace(current, **value)
        fields[name] = value
    return msgspec.structs.replace(settings, **fields)
