"""A bar chart as plain inline SVG, drawn on the server: one bar per day, optionally stacked, a y-axis
rounded to a readable step, a tooltip (``<title>``) per day. No script, no style attribute (the CSP
forbids both inline): colours come from classes in admin.css. Every text that goes in is HTML-escaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

__all__ = ("Bars", "Series", "axis", "bar_chart")

# the drawing's own units; the SVG scales to its container's width
WIDTH = 720
HEIGHT = 220
_LEFT = 64  # room for the y labels
_RIGHT = 8
_TOP = 10
_BOTTOM = 26  # room for the x labels
_GRID_LINES = 4  # at most; as many as the step needs to pass the highest bar
_X_LABELS = 8  # at most this many day labels under the bars


class Series:
    """One layer of the bars: its name (legend, tooltips), CSS class and a value per day."""

    def __init__(self, name: str, css_class: str, values: Sequence[float]) -> None:
        self.name = name
        self.css_class = css_class
        self.values = values


class Bars:
    """What a chart shows: the days (labels, ``data-day``), the stacked series, how a value reads."""

    def __init__(
        self,
        title: str,
        days: Sequence[str],
        series: Sequence[Series],
        fmt: Callable[[float], str],
        *,
        whole: bool = False,
    ) -> None:
        self.title = title
        self.days = days
        self.series = series
        self.fmt = fmt
        self.whole = whole  # counts: the axis steps by whole numbers


def axis(peak: float, *, whole: bool = False) -> tuple[float, int]:
    """(top, grid lines) of an axis that reads well: a step of 1, 2, 2.5 or 5 × 10^k (whole numbers for
    counts), as few lines of it (at most four) as reach ``peak``."""
    if peak <= 0:
        return (float(_GRID_LINES) if whole else 1.0), _GRID_LINES
    raw = peak / _GRID_LINES
    power = 10.0 ** math.floor(math.log10(raw))
    step = 10.0 * power
    for m in (1.0, 2.0, 2.5, 5.0):
        if whole and m == 2.5 and power < 10:
            continue  # 2.5 tokens is no count
        if raw <= m * power * (1 + 1e-9):
            step = m * power
            break
    if whole:
        step = max(step, 1.0)
    lines = max(1, math.ceil(peak / step - 1e-9))
    return step * lines, lines


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def bar_chart(bars: Bars) -> str:
    """The chart as an ``<svg>`` element; each day's bars in a ``<g class="day" data-day=…>``."""
    totals = [sum(s.values[i] for s in bars.series) for i in range(len(bars.days))]
    top, lines = axis(max(totals, default=0.0), whole=bars.whole)
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    slot = plot_w / max(len(bars.days), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(bars.title)}" preserveAspectRatio="xMidYMid meet">',
        f"<title>{escape(bars.title)}</title>",
    ]
    for n in range(lines + 1):
        y = _TOP + plot_h - plot_h * n / lines
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{_num(y)}" y2="{_num(y)}"/>'
            f'<text class="axis" x="{_LEFT - 6}" y="{_num(y + 4)}" text-anchor="end">'
            f"{escape(bars.fmt(top * n / lines))}</text>"
        )
    label_every = math.ceil(len(bars.days) / _X_LABELS) or 1
    for i, day in enumerate(bars.days):
        parts.append(_day(bars, i, day, _LEFT + slot * i, slot, plot_h / top))
        if (len(bars.days) - 1 - i) % label_every == 0:  # the newest day always gets its label
            x = _LEFT + slot * (i + 0.5)
            parts.append(
                f'<text class="axis" x="{_num(x)}" y="{HEIGHT - 8}" text-anchor="middle">'
                f"{escape(day[5:])}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _day(bars: Bars, i: int, day: str, x: float, slot: float, scale: float) -> str:
    """One day: a transparent full-height target for the tooltip, then the stacked bars bottom up."""
    plot_bottom = HEIGHT - _BOTTOM
    total = sum(s.values[i] for s in bars.series)
    tip = f"{day}: " + ", ".join(f"{s.name} {bars.fmt(s.values[i])}" for s in bars.series)
    inner = max(slot * 0.72, 1.0)
    left = x + (slot - inner) / 2
    out = [
        f'<g class="day" data-day="{escape(day)}" data-total="{total!r}">',
        f"<title>{escape(tip)}</title>",
        f'<rect class="hit" x="{_num(x)}" y="{_TOP}" width="{_num(slot)}" height="{plot_bottom - _TOP}"/>',
    ]
    y = float(plot_bottom)
    for s in bars.series:
        h = s.values[i] * scale
        if h <= 0:
            continue
        h = max(h, 1.0)  # a tiny spend still shows as a sliver, not as nothing
        y -= h
        out.append(
            f'<rect class="bar {escape(s.css_class)}" x="{_num(left)}" y="{_num(y)}" '
            f'width="{_num(inner)}" height="{_num(h)}"/>'
        )
    out.append("</g>")
    return "".join(out)
