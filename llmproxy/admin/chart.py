"""A bar chart as plain inline SVG, drawn on the server: one bar per day, optionally stacked, a y-axis
rounded to a readable step, a tooltip (``<title>``) per day. No script, no style attribute (the CSP
forbids both inline): colours come from classes in admin.css. Every text that goes in is HTML-escaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

__all__ = ("Bars", "Series", "bar_chart", "nice_ceiling")

# the drawing's own units; the SVG scales to its container's width
WIDTH = 720
HEIGHT = 220
_LEFT = 64  # room for the y labels
_RIGHT = 8
_TOP = 10
_BOTTOM = 26  # room for the x labels
_GRID_LINES = 4
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
        self, title: str, days: Sequence[str], series: Sequence[Series], fmt: Callable[[float], str]
    ) -> None:
        self.title = title
        self.days = days
        self.series = series
        self.fmt = fmt


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 × 10^k at or above ``value``: a top of the axis that reads well."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10.0 * power


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def bar_chart(bars: Bars) -> str:
    """The chart as an ``<svg>`` element; each day's bars in a ``<g class="day" data-day=…>``."""
    totals = [sum(s.values[i] for s in bars.series) for i in range(len(bars.days))]
    top = nice_ceiling(max(totals, default=0.0))
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    slot = plot_w / max(len(bars.days), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(bars.title)}" preserveAspectRatio="xMidYMid meet">',
        f"<title>{escape(bars.title)}</title>",
    ]
    for n in range(_GRID_LINES + 1):
        y = _TOP + plot_h - plot_h * n / _GRID_LINES
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{_num(y)}" y2="{_num(y)}"/>'
            f'<text class="axis" x="{_LEFT - 6}" y="{_num(y + 4)}" text-anchor="end">'
            f"{escape(bars.fmt(top * n / _GRID_LINES))}</text>"
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
