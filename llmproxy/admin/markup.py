"""Small HTML builders the server-drawn pages share, and how they read a form's query. Every value goes
through ``html.escape`` on its way in (text and attributes alike), so stored text (model names,
captured bodies) can never become markup."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from urllib.parse import urlencode

__all__ = ("alert", "count", "figures", "filled", "href", "money", "table")


def filled(query: Mapping[str, str]) -> dict[str, str]:
    """The query's parameters that have a value (first of each): a form's empty "any" choice is absent."""
    return {key: value for key in query if (value := query.get(key, "")) != ""}


def money(value: float | None) -> str:
    """USD as a person reads it: cents from $1 on, four significant digits below; ``—`` for unknown."""
    if value is None:
        return "—"
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    digits = min(max(2, 3 - math.floor(math.log10(abs(value)))), 12)  # four significant digits
    whole, _, fraction = f"{value:.{digits}f}".partition(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"


def count(value: float) -> str:
    """A count with thousands separators; whole numbers only (an axis step may be 2.5: rounded up)."""
    return f"{round(value):,}"


def href(path: str, params: Mapping[str, str | int | None]) -> str:
    """``path?query`` of the parameters that have a value, escaped for an attribute."""
    query = urlencode({k: v for k, v in params.items() if v is not None and v != ""})
    return escape(f"{path}?{query}" if query else path)


def alert(message: str, kind: str = "error") -> str:
    return f'<p class="alert {escape(kind)}" role="alert">{escape(message)}</p>'


def figures(items: Iterable[tuple[str, str]]) -> str:
    """A row of labelled figures (the Dispatchers page's ``dl.figures`` look)."""
    cells = "".join(f"<div><dt>{escape(label)}</dt><dd>{escape(value)}</dd></div>" for label, value in items)
    return f'<dl class="figures">{cells}</dl>'


def table(
    heads: Sequence[tuple[str, bool]], rows: Iterable[Sequence[str]], *, empty: str, css_id: str = ""
) -> str:
    """A ``table.data``: ``heads`` are (label, numeric); ``rows`` hold cells that are ALREADY markup
    (escape text with ``html.escape`` before handing it in); ``empty`` shows when there are no rows."""
    head = "".join(f"<th{' class=num' if num else ''}>{escape(label)}</th>" for label, num in heads)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if heads[i][1] else ''}>{cell}</td>" for i, cell in enumerate(row))
        + "</tr>"
        for row in rows
    )
    ident = f' id="{escape(css_id)}"' if css_id else ""
    if not body:
        return f'<table class="data"{ident}><thead><tr>{head}</tr></thead><tbody></tbody></table>' + (
            f'<p class="empty">{escape(empty)}</p>'
        )
    return f'<table class="data"{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
