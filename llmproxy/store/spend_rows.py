"""What both SQL stores share for usage accounting: merging a flush's rows, per-token and per-project
increments in a fixed order (concurrent flushes of several instances lock rows alike: no deadlock), and
the GET /manage/usage query.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import date
from typing import Any, NamedTuple

from llmproxy.store.base import TokenUsage, UsageGroup, UsageQuery, UsageRow
from llmproxy.store.rows import Dialect, merge_usage

__all__ = (
    "TokenIncrement",
    "Totals",
    "merge_rows",
    "project_increments",
    "token_increments",
    "REPORT_FIELDS",
    "USAGE_SUMS",
    "add_daily_sql",
    "daily_params",
    "usage_report_sql",
    "usage_group",
)

USAGE_SUMS = (  # the summed columns of usage_daily (and fields of UsageRow / UsageGroup), in order
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "unpriced_requests",
    "estimated_requests",
)

# A usage report group as GET /manage/usage answers it (and its CSV exports write it), in column order.
REPORT_FIELDS = (
    "key",
    "project_id",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cost_usd",
    "unpriced_requests",
    "estimated_requests",
)


def daily_params(rows: Iterable[UsageRow], day: Callable[[date], Any]) -> list[tuple[Any, ...]]:
    """The parameters of ``add_daily_sql`` for each row, its day as the driver binds it."""
    return [
        (day(r.day), r.project_id, r.token_id, r.model, *(getattr(r, c) for c in USAGE_SUMS)) for r in rows
    ]


def add_daily_sql(dialect: Dialect) -> str:
    """Upsert one daily row: the sums added to the row of its (day, project, token, model)."""
    marks = ", ".join(dialect.placeholder(i) for i in range(1, 5 + len(USAGE_SUMS)))
    return (
        f"INSERT INTO usage_daily (day, project_id, token_id, model, {', '.join(USAGE_SUMS)}) VALUES ({marks})"
        " ON CONFLICT (day, project_id, token_id, model) DO UPDATE SET "
        + ", ".join(f"{c} = usage_daily.{c} + excluded.{c}" for c in USAGE_SUMS)
    )


_KEYS = {"day": "day", "model": "model", "token": "token_id", "project": "project_id"}


class Totals(NamedTuple):
    """Usage to add to one token's or project's lifetime totals."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float


class TokenIncrement(NamedTuple):
    """Everything one flush adds to one token row."""

    token_id: str
    requests: int
    cache_hits: int
    last_used_at: Any  # datetime | None, as merge_usage keeps it
    usage: Totals


_NONE = Totals(0, 0, 0, 0.0)


def merge_rows(rows: Iterable[UsageRow]) -> list[UsageRow]:
    """One row per (day, project, token, model), sums added, in key order."""
    merged: dict[tuple[date, str, str, str], UsageRow] = {}
    for row in rows:
        key = (row.day, row.project_id, row.token_id, row.model)
        seen = merged.get(key)
        if seen is None:
            merged[key] = UsageRow(
                day=row.day, project_id=row.project_id, token_id=row.token_id, model=row.model
            )
            seen = merged[key]
        for name in USAGE_SUMS:
            setattr(seen, name, getattr(seen, name) + getattr(row, name))
    return [merged[k] for k in sorted(merged)]


def _add(totals: dict[str, Totals], key: str, row: UsageRow) -> None:
    t = totals.get(key, _NONE)
    totals[key] = Totals(
        t.prompt_tokens + row.prompt_tokens,
        t.completion_tokens + row.completion_tokens,
        t.cached_tokens + row.cached_tokens,
        t.cost_usd + row.cost_usd,
    )


def token_increments(usage: Iterable[TokenUsage], rows: Sequence[UsageRow]) -> list[TokenIncrement]:
    """Per token, ordered by id: its request and cache-hit counters and its usage totals, for one UPDATE."""
    counters = {u.token_id: u for u in merge_usage(usage)}
    totals: dict[str, Totals] = {}
    for row in rows:
        _add(totals, row.token_id, row)
    result = []
    for token_id in sorted(counters.keys() | totals.keys()):
        counted = counters.get(token_id)
        requests, hits, used = (
            (counted.requests, counted.cache_hits, counted.last_used_at) if counted else (0, 0, None)
        )
        result.append(TokenIncrement(token_id, requests, hits, used, totals.get(token_id, _NONE)))
    return result


def project_increments(rows: Sequence[UsageRow]) -> list[tuple[str, Totals]]:
    """Per project, ordered by id: its usage totals."""
    totals: dict[str, Totals] = {}
    for row in rows:
        _add(totals, row.project_id, row)
    return sorted(totals.items())


def usage_report_sql(
    query: UsageQuery, dialect: Dialect, day: Any = str, day_text: str = "day"
) -> tuple[str, list[Any]]:
    """``SELECT key, [project_id,] sums… FROM usage_daily WHERE … GROUP BY … ORDER BY key`` and its
    parameters; ``day`` binds a date as the database stores it, ``day_text`` reads one as YYYY-MM-DD."""
    clauses: list[str] = []
    params: list[Any] = []
    for column in ("project_id", "token_id", "model"):
        value = getattr(query, column)
        if value is not None:
            params.append(value)
            clauses.append(f"{column} = {dialect.placeholder(len(params))}")
    for bound, op in ((query.since, ">="), (query.until, "<=")):
        if bound is not None:
            params.append(day(bound))
            clauses.append(f"day {op} {dialect.placeholder(len(params))}")
    key = _KEYS[query.group_by]
    columns = [f"{day_text if key == 'day' else key} AS key"]
    group = [key]
    if query.group_by == "token":
        columns.append("min(project_id) AS project_id")
    sums = [f"sum({name}) AS {name}" for name in USAGE_SUMS]
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = (
        f"SELECT {', '.join(columns + sums)} FROM usage_daily{where}"
        f" GROUP BY {', '.join(group)} ORDER BY {key}"
    )
    return sql, params


def usage_group(row: Any) -> UsageGroup:
    """A fetched report row (sqlite3.Row or asyncpg.Record) as a UsageGroup."""
    keys = row.keys()
    return UsageGroup(
        key=str(row["key"]),
        project_id=row["project_id"] if "project_id" in keys else None,
        requests=int(row["requests"]),
        prompt_tokens=int(row["prompt_tokens"]),
        completion_tokens=int(row["completion_tokens"]),
        cached_tokens=int(row["cached_tokens"]),
        cost_usd=float(row["cost_usd"]),
        unpriced_requests=int(row["unpriced_requests"]),
        estimated_requests=int(row["estimated_requests"]),
    )
