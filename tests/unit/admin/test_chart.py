"""The Usage page's SVG chart and number formats: bars in proportion on a readable axis, every text
escaped, nothing the CSP would block (no script, no style attribute)."""

from __future__ import annotations

import re

import pytest

from llmproxy.admin.chart import HEIGHT, Bars, Series, axis, bar_chart
from llmproxy.admin.markup import count, href, money


@pytest.mark.parametrize(
    ("peak", "whole", "top", "lines"),
    [
        (0, False, 1.0, 4),
        (0, True, 4.0, 4),
        (1, False, 1.0, 4),  # steps of 0.25
        (0.55, False, 0.6, 3),  # 0.2
        (8.4e-5, False, 1e-4, 4),  # 0.000025
        (24, True, 30.0, 3),  # 10: never 6.25 tokens
        (7, True, 8.0, 4),  # 2
        (3, True, 3.0, 3),  # 1
        (1, True, 1.0, 1),
        (12_345, True, 15_000.0, 3),  # 5,000
        (24, False, 30.0, 3),  # 10 again: 6 is no step
    ],
)
def test_the_axis_steps_by_a_readable_value_up_to_the_highest_bar(
    peak: float, whole: bool, top: float, lines: int
) -> None:
    found_top, found_lines = axis(peak, whole=whole)
    assert (found_top, found_lines) == (pytest.approx(top), lines)


def heights(svg: str, css_class: str) -> dict[str, float]:
    days = re.findall(r'<g class="day" data-day="([^"]+)"[^>]*>(.*?)</g>', svg)
    found = {}
    for day, markup in days:
        bar = re.search(rf'<rect class="bar {css_class}"[^>]* height="([0-9.]+)"', markup)
        found[day] = float(bar.group(1)) if bar else 0.0
    return found


def test_bars_are_in_proportion_and_stack() -> None:
    days = ["2025-01-01", "2025-01-02", "2025-01-03"]
    svg = bar_chart(
        Bars("t", days, [Series("a", "a", [1.0, 2.0, 0.0]), Series("b", "b", [1.0, 0.0, 0.0])], str)
    )
    a, b = heights(svg, "a"), heights(svg, "b")
    assert a["2025-01-02"] == pytest.approx(2 * a["2025-01-01"])
    assert b["2025-01-01"] == pytest.approx(a["2025-01-01"])  # stacked on top: same scale
    assert a["2025-01-03"] == 0.0 and b["2025-01-03"] == 0.0  # nothing drawn for nothing
    assert 0 < a["2025-01-02"] < HEIGHT


def test_a_tiny_value_still_shows_as_a_sliver() -> None:
    svg = bar_chart(Bars("t", ["d1", "d2"], [Series("a", "a", [1000.0, 0.001])], str))
    assert heights(svg, "a")["d2"] == 1.0


def test_every_text_is_escaped_and_nothing_inline_is_used() -> None:
    svg = bar_chart(Bars('<b>"x"</b>', ['<i>d</i>"'], [Series("<s>", "c", [1.0])], lambda v: f"<{v}>"))
    assert "<b>" not in svg and "<i>" not in svg and "<s>" not in svg and "<1.0>" not in svg
    assert "&lt;b&gt;&quot;x&quot;&lt;/b&gt;" in svg
    assert "style=" not in svg and "<script" not in svg


def test_the_newest_day_always_has_its_label() -> None:
    days = [f"2025-01-{n:02d}" for n in range(1, 31)]
    svg = bar_chart(Bars("t", days, [Series("a", "a", [1.0] * 30)], str))
    labels = re.findall(r'text-anchor="middle">([^<]+)</text>', svg)
    assert labels[-1] == "01-30" and len(labels) <= 8


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "—"),
        (0, "$0"),
        (0.5, "$0.50"),
        (1234.5, "$1,234.50"),
        (0.0012345, "$0.001234"),
        (3.15e-6, "$0.00000315"),
        (0.99999, "$1.00"),
        (1e-13, "$0.00"),
    ],
)
def test_money_reads_as_dollars_and_cents_or_four_significant_digits(value: float | None, text: str) -> None:
    assert money(value) == text


def test_counts_and_links() -> None:
    assert count(1234567) == "1,234,567" and count(2.5) == "2"
    assert (
        href("/admin/usage", {"model": "a&b<c>", "days": None, "x": ""}) == "/admin/usage?model=a%26b%3Cc%3E"
    )
