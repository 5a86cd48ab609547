"""How ``llm-proxy manage`` shows answers to people: tables that fit 100 columns, or every field.

By default ids are cut to 8 characters, times to the minute in UTC, and the widest free-text
columns are shortened with "…" until a row fits ``WIDTH``; ``--wide`` shows every column in full.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec

__all__ = (
    "AUDIT_COLUMNS",
    "PROJECT_COLUMNS",
    "TOKEN_COLUMNS",
    "WIDTH",
    "Column",
    "cell",
    "fields",
    "table",
)

WIDTH = 100
SHORT_ID = 8
_GAP = "  "
_MIN_FLEX = 8  # a shortened column keeps at least this many characters (or its header's)


class Column(msgspec.Struct, frozen=True):
    """One table column: its header and how a row's cell reads, in the short and the wide table."""

    header: str
    short: Callable[[dict[str, Any]], Any]
    wide: Callable[[dict[str, Any]], Any] | None = None  # None: as short
    flex: bool = False  # may be shortened with "…" to fit WIDTH
    wide_only: bool = False


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):  # metadata, allowed_models: as JSON, not as Python
        return msgspec.json.encode(value).decode()
    return str(value)


def _short_id(value: Any) -> Any:
    return value[:SHORT_ID] if isinstance(value, str) else value


def _utc(pattern: str) -> Callable[[Any], Any]:
    """An RFC 3339 time from the API in UTC as ``pattern`` (``2026-12-06 09:01``); other values as they are."""

    def show(value: Any) -> Any:
        try:
            moment = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            return value
        return (moment.astimezone(UTC) if moment.tzinfo else moment).strftime(pattern)

    return show


_minute, _second = _utc("%Y-%m-%d %H:%M"), _utc("%Y-%m-%d %H:%M:%S")


def _field(name: str, show: Callable[[Any], Any] = lambda v: v) -> Callable[[dict[str, Any]], Any]:
    return lambda row: show(row.get(name))


def _spent(row: dict[str, Any]) -> str:
    """Tokens and USD used, against the budgets: ``1200/5000 tok $0.03/$5``."""
    used = row.get("prompt_tokens", 0) + row.get("completion_tokens", 0)
    tokens = f"{used}/{row['max_tokens']}" if row.get("max_tokens") is not None else str(used)
    cost = f"${row.get('cost_usd', 0):.2f}"
    if row.get("max_cost_usd") is not None:
        cost += f"/${row['max_cost_usd']:g}"
    return f"{tokens} tok {cost}"


def _requests(row: dict[str, Any]) -> str:
    limit = row.get("max_requests")
    return f"{row.get('request_count', 0)}/{limit}" if limit is not None else str(row.get("request_count", 0))


PROJECT_COLUMNS = (
    Column("ID", _field("id", _short_id), _field("id")),
    Column("NAME", _field("name"), flex=True),
    Column("ACTIVE", _field("is_active")),
    Column("API_KEY", _field("api_key")),
    Column("UPSTREAM_BASE_URL", _field("upstream_base_url"), flex=True),
    Column("CREATED (UTC)", _field("created_at", _minute), _field("created_at")),
    Column("USED", _spent, wide_only=True),
)
TOKEN_COLUMNS = (
    Column("ID", _field("id", _short_id), _field("id")),
    Column("PROJECT", _field("project_id", _short_id), _field("project_id")),
    Column("TOKEN", _field("token")),
    Column("NAME", _field("name"), flex=True, wide_only=True),
    Column("STATUS", _field("status")),
    Column("REQUESTS", _requests),
    Column("USED", _spent, wide_only=True),
    Column("RATE/MIN", _field("rate_limit_per_minute")),
    Column("EXPIRES (UTC)", _field("expires_at", _minute), _field("expires_at")),
    Column("CACHE_HITS", _field("cache_hit_count"), wide_only=True),
    Column("LAST_USED_AT", _field("last_used_at"), wide_only=True),
    Column("CREATED_AT", _field("created_at"), wide_only=True),
)
AUDIT_COLUMNS = (
    Column("TIME (UTC)", _field("timestamp", _second), _field("timestamp")),
    Column("ACTION", _field("action"), flex=True),
    Column("RESULT", _field("result")),
    Column("REASON", _field("reason"), flex=True),
    Column("ACTOR", _field("actor"), flex=True),
    Column("PROJECT", _field("project_id", _short_id), _field("project_id")),
    Column("TOKEN", _field("token_id", _short_id), _field("token_id")),
    Column("REQUEST_ID", _field("request_id"), wide_only=True),
    Column("CLIENT_IP", _field("client_ip"), wide_only=True),
    Column("DETAILS", lambda row: msgspec.json.encode(row.get("details") or {}).decode(), wide_only=True),
)


def _fit(widths: list[int], columns: Sequence[Column]) -> list[int]:
    """Shorten the widest flexible column, one character at a time, until a row fits WIDTH."""
    widths = list(widths)
    while sum(widths) + len(_GAP) * (len(widths) - 1) > WIDTH:
        flexible = [i for i, c in enumerate(columns) if c.flex and widths[i] > max(_MIN_FLEX, len(c.header))]
        if not flexible:
            break
        widest = max(flexible, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: list[dict[str, Any]], columns: Sequence[Column], out: TextIO, *, wide: bool = False) -> None:
    """Rows under upper-case headers, left-aligned; fitted to WIDTH unless ``wide``."""
    if not rows:
        out.write("(none)\n")
        return
    shown = [c for c in columns if wide or not c.wide_only]
    cells = [[cell((c.wide or c.short)(row) if wide else c.short(row)) for c in shown] for row in rows]
    headers = [c.header for c in shown]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    if not wide:
        widths = _fit(widths, shown)
    for line in (headers, *cells):
        padded = (_clip(v, w).ljust(w) for v, w in zip(line, widths, strict=True))
        out.write(_GAP.join(padded).rstrip() + "\n")


def fields(data: dict[str, Any], out: TextIO) -> None:
    """One ``name  value`` line per field, values in full."""
    width = max(len(k) for k in data)
    for key, value in data.items():
        out.write(f"{key.ljust(width)}  {cell(value)}\n")
