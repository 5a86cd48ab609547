"""Argument types of ``llm-proxy manage``: each turns the text of an option into what the API takes, or
raises ``argparse.ArgumentTypeError`` saying what was expected."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from llmproxy.config import parse_duration
from llmproxy.config_values import is_decimal

__all__ = ("CLEAR", "active", "expiry", "limit", "moment")

CLEAR = ("none", "never", "null")  # a value that removes a limit or the expiry


def active(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def limit(value: str) -> int | None:
    """A positive integer, or ``none`` to remove the limit."""
    if value.strip().lower() in CLEAR:
        return None
    text = value.strip()
    # ASCII digits only: int() would also read "١٠" (Arabic-Indic) as 10
    number = int(text) if is_decimal(text) else 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or none, got {value!r}")
    return number


def _with_offset(moment: datetime) -> str:
    """RFC 3339 with an offset, which the API requires: a time given without one is UTC."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def moment(value: str) -> str:
    """RFC 3339 (UTC when it has no offset), or a duration back from now (``30m``, ``2h``)."""
    try:
        moment = datetime.now(UTC) - timedelta(seconds=parse_duration(value))
    except ValueError:
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a time like 2026-12-06T09:00:00Z or a duration ago like 30m, got {value!r}"
            ) from None
    return _with_offset(moment)


def expiry(value: str) -> str | None:
    """An RFC 3339 time (UTC when it has no offset), or ``never``."""
    if value.strip().lower() in CLEAR:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a time like 2026-12-31T00:00:00Z or never, got {value!r}"
        ) from None
    return _with_offset(moment)
