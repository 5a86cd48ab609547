"""Usage accounting off the hot path: a finished request costs a few dict additions here; the Authority's
1 s flush writes what piled up (``take``) in the transaction that writes its request counters, and reads
back the shared totals of the tokens and projects whose budgets this instance enforces (``settle``).

A ``Spend`` is one token's or project's lifetime usage against its budget as this instance knows it: the
database's totals at the last flush, plus what was recorded here since. Every instance adds its own usage
by increments, so each sees the others' within one flush of theirs and one of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta

from llmproxy.openai.prices import PriceTable
from llmproxy.store.base import SpendTotal, SpendTotals, UsageRow

__all__ = ("Ledger", "Spend")

log = logging.getLogger(__name__)

_MAX_ROWS = 100_000  # pending daily rows kept while the store fails; past this, usage is dropped (logged)
_MAX_UNPRICED_LABELS = 100  # distinct model labels of llm_proxy_unpriced_requests_total; then "other"
_MAX_MODEL = 256  # characters of a model name kept (a client names it: rows, labels and keys stay small)
_OTHER = "other"


def _stored_model(model: str) -> str:
    """The client's model name as rows and labels keep it: cut short, and without NUL (PostgreSQL text
    cannot hold it: one such row would fail every flush, and with it every token's accounting)."""
    if len(model) > _MAX_MODEL:
        model = model[:_MAX_MODEL]
    return model.replace("\x00", "\ufffd") if "\x00" in model else model


class Spend:
    """Usage of one token or project (prompt + completion tokens, USD) against its budget."""

    __slots__ = (
        "max_tokens",
        "max_cost",
        "tokens",
        "cost",
        "unflushed_tokens",
        "unflushed_cost",
        "_sent",
        "spent",
    )

    def __init__(self, max_tokens: int | None, max_cost: float | None, tokens: int, cost: float) -> None:
        self.max_tokens = max_tokens
        self.max_cost = max_cost
        self.tokens = tokens  # as the database held it at the last flush (or load)
        self.cost = cost
        self.unflushed_tokens = 0  # recorded here, not yet in ``tokens``
        self.unflushed_cost = 0.0
        self._sent = (0, 0.0)  # the part of unflushed in the flush under way
        self.spent = False
        self._check()

    def limit(self, max_tokens: int | None, max_cost: float | None, total: SpendTotal | None = None) -> None:
        """New limits (a PATCH), and the database's totals when just read."""
        self.max_tokens, self.max_cost = max_tokens, max_cost
        if total is not None:
            self.tokens, self.cost = total.tokens, total.cost_usd
        self._check()

    def add(self, tokens: int, cost: float | None) -> None:
        self.unflushed_tokens += tokens
        if cost is not None:
            self.unflushed_cost += cost
        self._check()

    def sending(self) -> None:
        self._sent = (self.unflushed_tokens, self.unflushed_cost)

    def sent(self, total: SpendTotal | None) -> None:
        """The flush is written: ``total`` (read in its transaction) includes what it sent."""
        tokens, cost = self._sent
        self._sent = (0, 0.0)
        if total is not None:
            self.tokens, self.cost = total.tokens, total.cost_usd
            self.unflushed_tokens -= tokens
            self.unflushed_cost -= cost
        self._check()

    def _check(self) -> None:
        max_tokens, max_cost = self.max_tokens, self.max_cost
        self.spent = (max_tokens is not None and self.tokens + self.unflushed_tokens >= max_tokens) or (
            max_cost is not None and self.cost + self.unflushed_cost >= max_cost
        )

    @property
    def idle(self) -> bool:
        return self.unflushed_tokens == 0 and self.unflushed_cost == 0.0


class _Delta:
    """Usage of one (day, project, token, model) not yet written."""

    __slots__ = ("requests", "prompt", "completion", "cached", "cost", "unpriced", "estimated")

    def __init__(self) -> None:
        self.requests = self.prompt = self.completion = self.cached = self.unpriced = self.estimated = 0
        self.cost = 0.0


_Key = tuple[str, str, str, str]  # (day "YYYY-MM-DD", project id, token id, model or "")


class Ledger:
    """Usage per (day, project, token, model) until the next flush; the budgets' ``Spend``s by id."""

    def __init__(self, prices: PriceTable | None = None, *, retention_days: int = 400) -> None:
        self._prices = prices
        self.retention_days = retention_days
        self._rows: dict[_Key, _Delta] = {}
        self.tokens: dict[str, Spend] = {}  # token id -> its Spend, for tokens with a budget
        self.projects: dict[str, Spend] = {}  # project id -> its Spend, for projects with a budget
        self.unpriced: dict[str, int] = {}  # model label -> requests with tokens but no known price
        self.tpm_keys: set[str] = set()  # "token:<id>", "project:<id>" with a tokens-per-minute limit
        self.charge: Callable[[str, int], None] | None = None  # their windows, charged with each usage
        self.dropped = 0  # requests whose usage was dropped (the store failing for long)

    def record(
        self,
        token_id: str,
        project_id: str,
        day: str,
        model: str | None,
        usage: tuple[int, int, int] | None,
        estimated: bool = False,
    ) -> None:
        """One finished request: ``usage`` is (prompt, completion, cached prompt) tokens, None if unknown."""
        if model is not None:
            model = _stored_model(model)
        key = (day, project_id, token_id, model or "")
        delta = self._rows.get(key)
        if delta is None:
            if len(self._rows) >= _MAX_ROWS:
                self._drop()
                return
            delta = self._rows[key] = _Delta()
        delta.requests += 1
        if usage is None:
            return
        prompt, completion, cached = usage
        prices = self._prices
        cost = prices.cost(model, prompt, completion, cached) if prices is not None else None
        delta.prompt += prompt
        delta.completion += completion
        delta.cached += cached
        if estimated:
            delta.estimated += 1
        if cost is None:
            delta.unpriced += 1
            self._count_unpriced(model or "")
        else:
            delta.cost += cost
        spend = self.tokens.get(token_id)
        if spend is not None:
            spend.add(prompt + completion, cost)
        spend = self.projects.get(project_id)
        if spend is not None:
            spend.add(prompt + completion, cost)
        if self.tpm_keys and self.charge is not None:
            for window in (f"token:{token_id}", f"project:{project_id}"):
                if window in self.tpm_keys:
                    self.charge(window, prompt + completion)

    def _count_unpriced(self, model: str) -> None:
        unpriced = self.unpriced
        if model not in unpriced and len(unpriced) >= _MAX_UNPRICED_LABELS:
            model = _OTHER
        unpriced[model] = unpriced.get(model, 0) + 1

    def _drop(self) -> None:
        self.dropped += 1
        if self.dropped == 1:
            log.warning("usage buffer full (%d rows): dropping usage until the store takes it", _MAX_ROWS)

    # -- the flush
    @property
    def pending(self) -> bool:
        return bool(self._rows) or bool(self.tokens) or bool(self.projects)

    def take(self) -> list[UsageRow]:
        """The rows to write now; each Spend remembers what of it they carry."""
        rows, self._rows = self._rows, {}
        for spend in self._spends():
            spend.sending()
        days: dict[str, date] = {}
        taken = []
        for (day, project_id, token_id, model), d in rows.items():
            when = days.get(day) or days.setdefault(day, date.fromisoformat(day))
            taken.append(
                UsageRow(
                    day=when,
                    project_id=project_id,
                    token_id=token_id,
                    model=model,
                    requests=d.requests,
                    prompt_tokens=d.prompt,
                    completion_tokens=d.completion,
                    cached_tokens=d.cached,
                    cost_usd=d.cost,
                    unpriced_requests=d.unpriced,
                    estimated_requests=d.estimated,
                )
            )
        return taken

    def settle(self, totals: SpendTotals) -> None:
        """The rows taken are written; the budgets now hold the shared totals read with them."""
        for token_id, spend in self.tokens.items():
            spend.sent(totals.tokens.get(token_id))
        for project_id, spend in self.projects.items():
            spend.sent(totals.projects.get(project_id))

    def restore(self, rows: Iterable[UsageRow]) -> None:
        """The rows taken could not be written: keep them for the next flush."""
        for spend in self._spends():
            spend.sent(None)
        for row in rows:
            key = (row.day.isoformat(), row.project_id, row.token_id, row.model)
            delta = self._rows.get(key)
            if delta is None:
                if len(self._rows) >= _MAX_ROWS:
                    self._drop()
                    continue
                delta = self._rows[key] = _Delta()
            delta.requests += row.requests
            delta.prompt += row.prompt_tokens
            delta.completion += row.completion_tokens
            delta.cached += row.cached_tokens
            delta.cost += row.cost_usd
            delta.unpriced += row.unpriced_requests
            delta.estimated += row.estimated_requests

    def _spends(self) -> Iterable[Spend]:
        yield from self.tokens.values()
        yield from self.projects.values()

    def retention_cutoff(self, now: datetime | None = None) -> date:
        """The first day kept: daily rows before it are deleted."""
        today = (now or datetime.now(UTC)).date()
        return today - timedelta(days=self.retention_days)
