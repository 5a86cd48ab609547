"""The Usage page's markup: the filter form, the figures, the two daily charts, the top projects, tokens
and models by cost, and the days as a table. Pure functions of the reports; everything escaped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from html import escape

from llmproxy.admin.chart import Bars, Series, bar_chart
from llmproxy.admin.markup import count, figures, href, money, table
from llmproxy.manage.usage import UsageLine, UsageReport
from llmproxy.store.base import Project, Token

__all__ = ("DAY_CHOICES", "MAX_TOKEN_OPTIONS", "TOP", "UsageData", "token_label", "usage_markup")

TOP = 10  # rows in each "top by cost" table
DAY_CHOICES = (7, 30, 90, 365)
MAX_TOKEN_OPTIONS = 1000  # a select longer than this helps nobody: filter by project first
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_GROUPINGS = (("day", "per day"), ("project", "per project"), ("token", "per token"), ("model", "per model"))


@dataclass(frozen=True, kw_only=True)
class UsageData:
    """What the page shows: the filters, the UTC days, a report per grouping, the names of ids."""

    project_id: str | None
    token_id: str | None
    model: str | None
    days: int
    until: date
    by: Mapping[str, UsageReport]  # "day" | "project" | "token" | "model" -> its report
    projects: Mapping[str, Project]
    tokens: Mapping[str, Token]

    @property
    def since(self) -> date:
        return self.until - timedelta(days=self.days - 1)

    def params(self, **override: str | int | None) -> dict[str, str | int | None]:
        """The page's query, changed by ``override``: for links that keep the other filters."""
        base: dict[str, str | int | None] = {
            "project_id": self.project_id,
            "token_id": self.token_id,
            "model": self.model,
            "days": None if self.days == 30 else self.days,
        }
        return {**base, **override}


def token_label(token: Token | None, token_id: str) -> str:
    if token is None:
        return token_id[:8] + "…"
    return f"{token.name} ({token.token_hint})" if token.name else token.token_hint


def usage_markup(data: UsageData) -> dict[str, str]:
    """The page template's trusted markup, by placeholder."""
    return {
        "filters": _filters(data),
        "figures": _figures(data),
        "cost_chart": _cost_chart(data),
        "token_chart": _token_chart(data),
        "tops": _tops(data),
        "days_table": _days_table(data),
    }


def _option(value: str, label: str, chosen: str | None) -> str:
    selected = " selected" if value == (chosen or "") else ""
    return f'<option value="{escape(value)}"{selected}>{escape(label)}</option>'


def _filters(data: UsageData) -> str:
    projects = sorted(data.projects.values(), key=lambda p: p.name.lower())
    project_options = [_option("", "All projects", data.project_id)] + [
        _option(p.id, p.name if p.is_active else f"{p.name} (inactive)", data.project_id) for p in projects
    ]
    if data.project_id and data.project_id not in data.projects:  # still shown as the filter it is
        project_options.append(_option(data.project_id, data.project_id[:8] + "…", data.project_id))
    tokens = sorted(data.tokens.values(), key=lambda t: t.created_at, reverse=True)[:MAX_TOKEN_OPTIONS]
    if data.token_id and all(t.id != data.token_id for t in tokens):
        tokens.append(data.tokens.get(data.token_id) or _unknown_token(data.token_id))
    token_options = [_option("", "All tokens", data.token_id)] + [
        _option(t.id, token_label(t, t.id), data.token_id) for t in tokens
    ]
    days = sorted({*DAY_CHOICES, data.days})
    day_options = [_option(str(n), f"last {n} days", str(data.days)) for n in days]
    models = "".join(f'<option value="{escape(m.key)}">' for m in data.by["model"].groups if m.key)
    exports = " · ".join(
        f'<a href="{href("/admin/usage.csv", data.params(group_by=g))}" download>{escape(label)}</a>'
        for g, label in _GROUPINGS
    )
    return (
        '<form id="usage-filter" class="toolbar" method="get" action="/admin/usage">'
        f'<label>Project <select name="project_id">{"".join(project_options)}</select></label>'
        f'<label>Token <select name="token_id">{"".join(token_options)}</select></label>'
        '<label>Model <input name="model" list="usage-models" maxlength="256" placeholder="any model"'
        f' value="{escape(data.model or "")}"><datalist id="usage-models">{models}</datalist></label>'
        f'<label>Period <select name="days">{"".join(day_options)}</select></label>'
        '<button type="submit" class="primary">Apply</button>'
        '<a class="small-link" href="/admin/usage">Reset</a>'
        '<span class="spacer"></span>'
        f'<span class="exports">CSV: {exports}</span>'
        "</form>"
    )


def _unknown_token(token_id: str) -> Token:
    """A stand-in for a filter's token id that is in no listing: still shown as chosen."""
    return Token(id=token_id, project_id="", token_hash="", token_hint=token_id[:8] + "…", created_at=_EPOCH)


def _day_lines(data: UsageData) -> list[tuple[str, UsageLine | None]]:
    found = {line.key: line for line in data.by["day"].groups}
    days = [(data.since + timedelta(days=n)).isoformat() for n in range(data.days)]
    return [(day, found.get(day)) for day in days]


def _figures(data: UsageData) -> str:
    total = data.by["day"].total
    today = dict(_day_lines(data)).get(data.until.isoformat())
    items = [
        ("Cost", money(total.cost_usd if total.requests else 0.0)),
        ("Cost today (UTC)", money(today.cost_usd if today else 0.0)),
        ("Tokens", count(total.total_tokens)),
        ("Requests", count(total.requests)),
        ("Cached prompt tokens", count(total.cached_tokens)),
        ("Unpriced requests", count(total.unpriced_requests)),
        ("Estimated requests", count(total.estimated_requests)),
    ]
    return figures(items)


def _cost_chart(data: UsageData) -> str:
    lines = _day_lines(data)
    costs = [(line.cost_usd or 0.0) if line else 0.0 for _, line in lines]
    bars = Bars("Spend per UTC day, USD", [d for d, _ in lines], [Series("cost", "cost", costs)], money)
    return bar_chart(bars)


def _token_chart(data: UsageData) -> str:
    lines = _day_lines(data)
    prompt = [float(line.prompt_tokens) if line else 0.0 for _, line in lines]
    completion = [float(line.completion_tokens) if line else 0.0 for _, line in lines]
    series = [Series("prompt", "prompt", prompt), Series("completion", "completion", completion)]
    legend = (
        '<p class="legend"><span class="swatch prompt"></span>prompt tokens '
        '<span class="swatch completion"></span>completion tokens</p>'
    )
    chart = Bars("Tokens per UTC day", [d for d, _ in lines], series, count, whole=True)
    return bar_chart(chart) + legend


def _by_cost(lines: Sequence[UsageLine]) -> list[UsageLine]:
    return sorted(lines, key=lambda g: (g.cost_usd or 0.0, g.total_tokens, g.requests), reverse=True)[:TOP]


def _top(data: UsageData, group: str, title: str) -> str:
    rows = []
    for line in _by_cost(data.by[group].groups):
        label, params = _group_label(data, group, line)
        link = f'<a href="{href("/admin/usage", data.params(**params))}">{escape(label)}</a>'
        rows.append([link, count(line.requests), count(line.total_tokens), escape(money(line.cost_usd))])
    heads = [(_HEADS[group], False), ("Requests", True), ("Tokens", True), ("Cost", True)]
    body = table(heads, rows, empty="No usage in this period.", css_id=f"top-{group}s")
    return f'<section class="card"><h2>{escape(title)}</h2>{body}</section>'


_HEADS = {"project": "Project", "token": "Token", "model": "Model"}


def _group_label(data: UsageData, group: str, line: UsageLine) -> tuple[str, dict[str, str | None]]:
    """The group's name as people know it, and the filter that narrows the page to it."""
    if group == "project":
        project = data.projects.get(line.key)
        return (project.name if project else line.key[:8] + "…"), {"project_id": line.key}
    if group == "token":
        return token_label(data.tokens.get(line.key), line.key), {"token_id": line.key}
    return (line.key or "(no model)"), {"model": line.key or None}


def _tops(data: UsageData) -> str:
    return (
        _top(data, "project", "Top projects by cost")
        + _top(data, "token", "Top tokens by cost")
        + _top(data, "model", "Top models by cost")
    )


def _days_table(data: UsageData) -> str:
    rows = [
        [
            escape(day),
            count(line.requests),
            count(line.prompt_tokens),
            count(line.completion_tokens),
            count(line.cached_tokens),
            escape(money(line.cost_usd)),
        ]
        for day, line in reversed(_day_lines(data))
        if line is not None
    ]
    heads = [
        ("Day (UTC)", False),
        ("Requests", True),
        ("Prompt", True),
        ("Completion", True),
        ("Cached", True),
        ("Cost", True),
    ]
    return table(heads, rows, empty="No usage in this period.", css_id="usage-days")
