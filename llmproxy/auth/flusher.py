"""The usage flush: counters of unlimited tokens and cache hits, and the ledger's usage rows, written every
second in one store transaction that also reads back the shared totals the budgets compare against.

Writes run one after another, each to its end even if its caller was cancelled (shutdown), so no count is
lost or written twice; a failed write keeps everything for the next tick. A row the store refuses (a value
out of its range) is set aside, logged, after ISOLATE_AFTER failed ticks, so it cannot block the others.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from llmproxy.auth.ledger import Ledger
from llmproxy.store.base import SpendTotals, Store, TokenUsage, UsageRow

__all__ = ("UsageFlusher",)

log = logging.getLogger(__name__)

ISOLATE_AFTER = 3  # failed flushes in a row, the store answering, before rows are tried one by one


class _Pending:
    """Counts since the last flush, latest use as a clock reading."""

    __slots__ = ("requests", "cache_hits", "last_used")

    def __init__(self) -> None:
        self.requests = 0
        self.cache_hits = 0
        self.last_used = 0.0


class UsageFlusher:
    """What the Authority counts in memory, until ``flush`` writes it."""

    def __init__(self, store: Store, ledger: Ledger, *, max_pending: int) -> None:
        self._store = store
        self.ledger = ledger
        self._pending: dict[str, _Pending] = {}
        self._max_pending = max_pending
        self._flushing: asyncio.Task[None] | None = None
        self._failing = False
        self._failed_ticks = 0  # flushes failed in a row
        self.dropped = 0
        self.set_aside = 0  # usage rows the store refused alone, logged

    def request(self, token_id: str, now: float) -> None:
        self._pending_for(token_id, now).requests += 1

    def cache_hit(self, token_id: str, now: float) -> None:
        self._pending_for(token_id, now).cache_hits += 1

    async def flush(self) -> None:
        write = self._write(after=self._flushing)
        self._flushing = asyncio.get_running_loop().create_task(write, name="usage-write")
        await asyncio.shield(self._flushing)

    async def _write(self, after: asyncio.Task[None] | None) -> None:
        if after is not None:
            await asyncio.wait([after])
        ledger = self.ledger
        if not self._pending and not ledger.pending:
            return
        pending, self._pending = self._pending, {}
        usage = [
            TokenUsage(token_id, p.requests, p.cache_hits, _utc(p.last_used))
            for token_id, p in pending.items()
        ]
        rows = ledger.take()
        try:
            totals = await self._store.add_usage(
                usage, rows, watch_tokens=list(ledger.tokens), watch_projects=list(ledger.projects)
            )
        except Exception as exc:  # keep the counts and retry next tick; never kill the loop
            self._failed_ticks += 1
            if rows and self._failed_ticks >= ISOLATE_AFTER and await self._isolated(usage, rows):
                self._failed_ticks = 0
                return
            self._restore(pending)
            ledger.restore(rows)
            if not self._failing:
                self._failing = True
                log.warning(
                    "cannot write token usage of %d tokens, retrying every second: %s",
                    len(self._pending),
                    exc,
                )
            return
        ledger.settle(totals)
        self._failed_ticks = 0
        if self._failing:
            self._failing = False
            log.info("token usage written again (%d tokens)", len(usage))

    async def _isolated(self, usage: list[TokenUsage], rows: list[UsageRow]) -> bool:
        """The batch keeps failing while the store answers: a row it refuses (a value out of its range)
        would block every other. Write the counters, then each row alone, and set aside (log, count)
        the rows that fail alone. False, and nothing changed, when the store does not answer."""
        store, ledger = self._store, self.ledger
        try:
            await store.ping()
            await store.add_usage(usage, [])
        except Exception:
            return False
        for row in rows:
            try:
                await store.add_usage([], [row])
            except Exception as exc:
                self.set_aside += 1
                log.error(
                    "usage row set aside, the store refuses it (%s): day %s project %s token %s, %d requests",
                    type(exc).__name__, row.day, row.project_id, row.token_id, row.requests,
                )  # fmt: skip
        try:
            totals = await store.add_usage(
                [], [], watch_tokens=list(ledger.tokens), watch_projects=list(ledger.projects)
            )
        except Exception:
            totals = SpendTotals()  # read at the next flush; meanwhile budgets count the rows twice
        ledger.settle(totals)
        return True

    def _restore(self, pending: dict[str, _Pending]) -> None:
        for token_id, old in pending.items():
            current = self._pending.get(token_id)
            if current is None:
                if len(self._pending) >= self._max_pending:
                    self._drop()
                    continue
                self._pending[token_id] = old
                continue
            current.requests += old.requests
            current.cache_hits += old.cache_hits
            current.last_used = max(current.last_used, old.last_used)

    def _pending_for(self, token_id: str, now: float) -> _Pending:
        pending = self._pending.get(token_id)
        if pending is None:
            pending = _Pending()
            if len(self._pending) < self._max_pending:
                self._pending[token_id] = pending
            else:  # the store has been failing for long: counting into a throwaway beats growing
                self._drop()
        pending.last_used = now
        return pending

    def _drop(self) -> None:
        self.dropped += 1
        if self.dropped == 1:
            log.warning("token usage buffer full: dropping usage of further tokens until it drains")

    async def prune_usage(self) -> None:
        """Forget the daily usage rows older than USAGE_RETENTION_DAYS (logged, never raised)."""
        try:
            deleted = await self._store.delete_usage_before(self.ledger.retention_cutoff())
        except Exception as exc:
            log.warning("cannot delete old usage rows: %s", exc)
            return
        if deleted:
            log.info("deleted %d daily usage rows older than %d days", deleted, self.ledger.retention_days)


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
