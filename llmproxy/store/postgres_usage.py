"""Usage accounting on PostgreSQL: the flush's one transaction (counters, totals, daily rows), the usage
report and retention. Every total moves by increments (``x = x + $n``, ``ON CONFLICT … DO UPDATE``), so
several instances flushing at once add up; rows are locked in key order, so they cannot deadlock.
A mixin of ``PostgresStore``, apart so that the store's module stays about projects and tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import date

import asyncpg

from llmproxy.store.base import SpendTotal, SpendTotals, TokenUsage, UsageGroup, UsageQuery, UsageRow
from llmproxy.store.rows import Dialect, utc
from llmproxy.store.spend_rows import (
    add_daily_sql,
    daily_params,
    merge_rows,
    project_increments,
    token_increments,
    usage_group,
    usage_report_sql,
)

__all__ = ("PostgresUsage",)

_DIALECT = Dialect(placeholder=lambda i: f"${i}", time_out=utc, time_in=utc)

# GREATEST ignores NULL, so last_used_at only moves forward and a NULL update keeps the old value.
_ADD_TO_TOKEN = (
    "UPDATE tokens SET request_count = request_count + $2, cache_hit_count = cache_hit_count + $3,"
    " last_used_at = GREATEST(last_used_at, $4),"
    " prompt_tokens = prompt_tokens + $5, completion_tokens = completion_tokens + $6,"
    " cached_tokens = cached_tokens + $7, cost_usd = cost_usd + $8 WHERE id = $1"
)
_ADD_TO_PROJECT = (
    "UPDATE projects SET prompt_tokens = prompt_tokens + $2, completion_tokens = completion_tokens + $3,"
    " cached_tokens = cached_tokens + $4, cost_usd = cost_usd + $5 WHERE id = $1"
)
_ADD_DAILY = add_daily_sql(_DIALECT)


class PostgresUsage:
    """The usage half of the Store protocol over the store's pool (``_connection``)."""

    def _connection(
        self,
    ) -> contextlib.AbstractAsyncContextManager[asyncpg.pool.PoolConnectionProxy[asyncpg.Record]]:
        raise NotImplementedError  # PostgresStore's

    async def add_usage(
        self,
        usage: list[TokenUsage],
        rows: Sequence[UsageRow] = (),
        *,
        watch_tokens: Sequence[str] = (),
        watch_projects: Sequence[str] = (),
    ) -> SpendTotals:
        merged = merge_rows(rows)
        tokens = token_increments(usage, merged)
        if not tokens and not watch_tokens and not watch_projects:
            return SpendTotals()
        async with self._connection() as con, con.transaction():
            if tokens:
                await con.executemany(
                    _ADD_TO_TOKEN,
                    [(t.token_id, t.requests, t.cache_hits, t.last_used_at, *t.usage) for t in tokens],
                )
                await con.executemany(_ADD_TO_PROJECT, [(p, *t) for p, t in project_increments(merged)])
                await con.executemany(_ADD_DAILY, daily_params(merged, day=lambda d: d))
            return SpendTotals(
                tokens=await _totals(con, "tokens", watch_tokens),
                projects=await _totals(con, "projects", watch_projects),
            )

    async def usage_report(self, query: UsageQuery) -> list[UsageGroup]:
        sql, params = usage_report_sql(
            query, _DIALECT, day=lambda d: d, day_text="to_char(day, 'YYYY-MM-DD')"
        )
        async with self._connection() as con:
            return [usage_group(row) for row in await con.fetch(sql, *params)]

    async def delete_usage_before(self, day: date) -> int:
        async with self._connection() as con:
            status = await con.execute("DELETE FROM usage_daily WHERE day < $1", day)
        return int(status.split()[-1])


async def _totals(
    con: asyncpg.pool.PoolConnectionProxy[asyncpg.Record], table: str, ids: Sequence[str]
) -> dict[str, SpendTotal]:
    assert table in ("tokens", "projects")
    if not ids:
        return {}
    rows = await con.fetch(
        f"SELECT id, prompt_tokens + completion_tokens AS used, cost_usd FROM {table} WHERE id = ANY($1::text[])",
        list(ids),
    )
    return {row["id"]: SpendTotal(int(row["used"]), float(row["cost_usd"])) for row in rows}
