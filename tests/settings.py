"""Changed copies of the frozen ``Settings`` for tests: ``with_changes(s, upstream={"base_url": url})``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from llmproxy.config import Settings

__all__ = ("with_changes",)


def with_changes(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings``: ``section={field: value}`` replaces fields of that section, ``name=value``
    a top-level field (``metrics_enabled=False``); the sections are frozen, so tests cannot setattr."""
    fields: dict[str, Any] = {}
    for name, value in changes.items():
        current = getattr(settings, name)
        if isinstance(value, Mapping) and isinstance(current, msgspec.Struct):
            value = msgspec.structs.replace(current, **value)
        fields[name] = value
    return msgspec.structs.replace(settings, **fields)
