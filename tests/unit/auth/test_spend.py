"""The pure parts of spend control: a Spend against its budget through flushes, the ledger's rows, and the
tokens-per-minute windows."""

from __future__ import annotations

from datetime import date

from llmproxy.auth.ledger import Ledger, Spend
from llmproxy.auth.token_rate import TokenWindows, verdict
from llmproxy.config_prices import ModelPrice
from llmproxy.openai.prices import PriceTable
from llmproxy.store.base import SpendTotal, SpendTotals


def test_a_spend_is_spent_once_its_total_reaches_the_budget() -> None:
    spend = Spend(max_tokens=100, max_cost=None, tokens=90, cost=0.0)
    assert not spend.spent
    spend.add(9, None)
    assert not spend.spent
    spend.add(1, None)
    assert spend.spent


def test_a_flush_replaces_what_it_sent_by_the_shared_total_and_keeps_what_came_since() -> None:
    spend = Spend(max_tokens=100, max_cost=1.0, tokens=0, cost=0.0)
    spend.add(30, 0.25)
    spend.sending()
    spend.add(5, 0.05)  # recorded while the flush was being written
    spend.sent(SpendTotal(tokens=80, cost_usd=0.5))  # 30 of ours and 50 of other instances
    assert (spend.tokens, spend.unflushed_tokens) == (80, 5)
    assert abs(spend.cost + spend.unflushed_cost - 0.55) < 1e-12
    spend.add(15, None)
    assert spend.spent  # 80 + 5 + 15 = 100


def test_a_failed_flush_keeps_everything_unflushed() -> None:
    spend = Spend(max_tokens=None, max_cost=1.0, tokens=0, cost=0.0)
    spend.add(10, 0.6)
    spend.sending()
    spend.sent(None)
    assert (spend.tokens, spend.unflushed_tokens, spend.unflushed_cost) == (0, 10, 0.6)
    spend.add(1, 0.4)
    assert spend.spent


def test_the_ledger_sums_rows_prices_them_and_feeds_the_budgets() -> None:
    ledger = Ledger(PriceTable({"m": ModelPrice(input=1.0, output=2.0, cached=0.5)}, bundled=False))
    ledger.tokens["t"] = Spend(None, 0.001, 0, 0.0)
    ledger.record("t", "p", "2026-01-02", "m", (1000, 100, 400), estimated=False)
    ledger.record("t", "p", "2026-01-02", "m", None)  # a failed request: counted, no tokens
    ledger.record("t", "p", "2026-01-02", "other", (10, 10, 0), estimated=True)
    ledger.record("t", "p", "2026-01-02", None, (1, 1, 0))
    rows = {r.model: r for r in ledger.take()}
    assert set(rows) == {"m", "other", ""}
    m = rows["m"]
    assert (m.day, m.requests, m.prompt_tokens, m.completion_tokens, m.cached_tokens) == (
        date(2026, 1, 2),
        2,
        1000,
        100,
        400,
    )
    assert abs(m.cost_usd - (600 * 1.0 + 400 * 0.5 + 100 * 2.0) / 1e6) < 1e-15
    assert (rows["other"].unpriced_requests, rows["other"].estimated_requests) == (1, 1)
    assert ledger.unpriced == {"other": 1, "": 1}
    assert ledger.tokens["t"].spent  # $0.001 reached
    assert ledger.take() == []


def test_restored_rows_are_written_with_the_next_flush() -> None:
    ledger = Ledger()
    ledger.record("t", "p", "2026-01-02", "m", (1, 2, 0))
    rows = ledger.take()
    ledger.restore(rows)
    ledger.record("t", "p", "2026-01-02", "m", (1, 2, 0))
    [row] = ledger.take()
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (2, 2, 4)
    ledger.settle(SpendTotals())


def test_unpriced_labels_are_bounded() -> None:
    ledger = Ledger()
    for n in range(150):
        ledger.record("t", "p", "2026-01-02", f"model-{n}", (1, 1, 0))
    assert len(ledger.unpriced) == 101 and ledger.unpriced["other"] == 50


def test_tokens_per_minute_are_charged_to_the_windows_with_a_limit() -> None:
    charged: list[tuple[str, int]] = []
    ledger = Ledger()
    ledger.charge = lambda key, n: charged.append((key, n))
    ledger.tpm_keys = {"project:p"}
    ledger.record("t", "p", "2026-01-02", "m", (7, 3, 0))
    assert charged == [("project:p", 10)]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_window_lets_requests_through_below_its_limit_and_then_says_when() -> None:
    clock = Clock()
    windows = TokenWindows(clock=clock)
    assert windows.check("k", 100).allowed
    windows.charge("k", 60)
    clock.now += 10
    windows.charge("k", 50)
    refused = windows.check("k", 100)
    assert not refused.allowed and refused.retry_after == 50  # the first 60 leave 60 s after they came
    clock.now += 50
    assert windows.check("k", 100).allowed


def test_the_verdict_waits_for_as_many_buckets_as_it_takes() -> None:
    buckets = {100: 10, 110: 10, 120: 50}
    assert verdict(buckets, 100, now=130).allowed
    assert verdict(buckets, 60, now=130).retry_after == 40  # 100 and 110 leave: 50 < 60
    assert verdict(buckets, 50, now=130).retry_after == 50  # all three must leave


def test_a_model_name_is_kept_to_256_characters() -> None:
    ledger = Ledger()
    ledger.record("t", "p", "2026-01-02", "m" * 10_000, (1, 1, 0))
    [row] = ledger.take()
    assert row.model == "m" * 256 and set(ledger.unpriced) == {"m" * 256}
