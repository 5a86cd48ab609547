"""Usage accounting on SQLite: the flush's one transaction (counters, totals, daily rows), the usage report
and retention. A mixin of ``SqliteStore``, apart so that the store's module stays about projects and tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import date, datetime

import aiosqlite

from llmproxy.store.base import SpendTotal, SpendTotals, TokenUsage, UsageGroup, UsageQuery, UsageRow
from llmproxy.store.rows import Dialect, fixed_width_utc
from llmproxy.store.spend_rows import (
    add_daily_sql,
    daily_params,
    merge_rows,
    project_increments,
    token_increments,
    usage_group,
    usage_report_sql,
)

__all__ = ("SqliteUsage",)

_DIALECT = Dialect(placeholder=lambda i: f"?{i}", time_out=fixed_width_utc, time_in=datetime.fromisoformat)
_CHUNK = 500  # ids per IN (…): far below SQLite's limit on parameters

# last_used_at only moves forward: max() of fixed-width UTC text is the later instant (NULL keeps the old).
_ADD_TO_TOKEN = (
    "UPDATE tokens SET request_count = request_count + ?2, cache_hit_count = cache_hit_count + ?3,"
    " last_used_at = COALESCE(max(last_used_at, ?4), ?4, last_used_at),"
    " prompt_tokens = prompt_tokens + ?5, completion_tokens = completion_tokens + ?6,"
    " cached_tokens = cached_tokens + ?7, cost_usd = cost_usd + ?8 WHERE id = ?1"
)
_ADD_TO_PROJECT = (
    "UPDATE projects SET prompt_tokens = prompt_tokens + ?2, completion_tokens = completion_tokens + ?3,"
    " cached_tokens = cached_tokens + ?4, cost_usd = cost_usd + ?5 WHERE id = ?1"
)
_ADD_DAILY = add_daily_sql(_DIALECT)


def _chunks(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


class SqliteUsage:
    """The usage half of the Store protocol over the store's connection (``_session``)."""

    def _session(
        self, begin: str | None = None, *, migrated: bool = True
    ) -> contextlib.AbstractAsyncContextManager[aiosqlite.Connection]:
        raise NotImplementedError  # SqliteStore's

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
        async with self._session("IMMEDIATE" if tokens else "DEFERRED") as db:
            if tokens:
                await db.executemany(
                    _ADD_TO_TOKEN,
                    [
                        (
                            t.token_id,
                            t.requests,
                            t.cache_hits,
                            _DIALECT.bind("last_used_at", t.last_used_at),
                            *t.usage,
                        )
                        for t in tokens
                    ],
                )
                await db.executemany(_ADD_TO_PROJECT, [(p, *t) for p, t in project_increments(merged)])
                await db.executemany(_ADD_DAILY, daily_params(merged, day=date.isoformat))
            return SpendTotals(
                tokens=await _totals(db, "tokens", watch_tokens),
                projects=await _totals(db, "projects", watch_projects),
            )

    async def usage_report(self, query: UsageQuery) -> list[UsageGroup]:
        sql, params = usage_report_sql(query, _DIALECT, day=date.isoformat)
        async with self._session() as db:
            return [usage_group(row) for row in await db.execute_fetchall(sql, params)]

    async def delete_usage_before(self, day: date) -> int:
        async with self._session("IMMEDIATE") as db:
            async with db.execute("DELETE FROM usage_daily WHERE day < ?1", (day.isoformat(),)) as cursor:
                return cursor.rowcount


async def _totals(db: aiosqlite.Connection, table: str, ids: Sequence[str]) -> dict[str, SpendTotal]:
    assert table in ("tokens", "projects")
    found: dict[str, SpendTotal] = {}
    for chunk in _chunks(list(ids)):
        marks = ", ".join(f"?{i}" for i in range(1, len(chunk) + 1))
        sql = f"SELECT id, prompt_tokens + completion_tokens AS used, cost_usd FROM {table} WHERE id IN ({marks})"
        for row in await db.execute_fetchall(sql, tuple(chunk)):
            found[row["id"]] = SpendTotal(int(row["used"]), float(row["cost_usd"]))
    return found
