"""The Usage page (``GET /admin/usage``) and its CSV export (``GET /admin/usage.csv``): the reports of
``GET /manage/usage`` (``read_usage``, the same store query) for the last N UTC days, filtered by
project, token and model, drawn on the server so the chart needs no script and no library."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

from aiohttp import web
from msgspec import Meta, Struct

from llmproxy.admin.markup import alert, filled
from llmproxy.admin.pages import SECURITY_HEADERS, Pages, html_response
from llmproxy.admin.usage_html import UsageData, token_label, usage_markup
from llmproxy.errors import ProxyError, Refusal, StoreUnavailable
from llmproxy.manage.decoding import decode_query
from llmproxy.manage.schemas import Uuid
from llmproxy.manage.usage import UsageFilter, UsageReport, read_usage
from llmproxy.store.base import Store, UsageGrouping
from llmproxy.store.spend_rows import REPORT_FIELDS

__all__ = ("UsageExport", "UsagePage", "UsageView", "decode_view")

log = logging.getLogger(__name__)

DEFAULT_DAYS = 30
MAX_DAYS = 366
_GROUPS: tuple[UsageGrouping, ...] = ("day", "project", "token", "model")
_CSV_FIELDS = ("key", "name", *REPORT_FIELDS[1:])  # the API's columns, the name beside the key
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet would run as a formula


class UsageView(Struct, kw_only=True, forbid_unknown_fields=True):
    """Query of the Usage page; an empty field (a form's "All projects") counts as absent."""

    project_id: Uuid | None = None
    token_id: Uuid | None = None
    model: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    days: Annotated[int, Meta(ge=1, le=MAX_DAYS)] = DEFAULT_DAYS


class UsageExport(UsageView, kw_only=True, forbid_unknown_fields=True):
    """Query of the CSV export: the page's, and what a row is."""

    group_by: UsageGrouping = "day"


V = TypeVar("V", bound=UsageView)


def decode_view(query: Mapping[str, str], kind: type[V]) -> V:
    """The query as ``kind``, ids lower-cased; 422 ``invalid_field`` naming the field that does not fit."""
    view = decode_query(filled(query), kind)
    if view.project_id:
        view.project_id = view.project_id.lower()
    if view.token_id:
        view.token_id = view.token_id.lower()
    return view


def _cell(value: Any) -> Any:
    """A CSV cell; text that a spreadsheet would take for a formula (a model named ``=cmd()``) is quoted."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


class UsagePage:
    """Reads the usage reports and the names of the ids in them, and renders them as HTML or CSV."""

    def __init__(self, store: Store, pages: Pages) -> None:
        self._store = store
        self._pages = pages

    async def page(self, request: web.Request, csrf_token: str) -> web.Response:
        try:
            view = decode_view(request.query, UsageView)
        except ProxyError as exc:
            message = f"Invalid filter: {exc.message}"
            markup = {"error": alert(message), "filters": '<a href="/admin/usage">Reset the filters</a>'}
            return html_response(self._render(csrf_token, markup), 422)
        data = await self._read(view, list(_GROUPS))
        return html_response(self._render(csrf_token, usage_markup(data)))

    def _render(self, csrf_token: str, markup: dict[str, str]) -> str:
        slots = ("error", "filters", "figures", "cost_chart", "token_chart", "tops", "days_table")
        return self._pages.page("usage", csrf_token=csrf_token, markup={s: markup.get(s, "") for s in slots})

    async def csv_file(self, request: web.Request, csrf_token: str) -> web.Response:
        view = decode_view(request.query, UsageExport)  # a bad value: the API's 422, a clear message
        data = await self._read(view, [view.group_by])
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(_CSV_FIELDS)
        for line in data.by[view.group_by].groups:
            row = {**_as_dict(line), "name": _name(data, view.group_by, line.key)}
            writer.writerow([_cell(row.get(field)) for field in _CSV_FIELDS])
        filename = f"llmproxy-usage-{view.group_by}-{data.since}-{data.until}.csv"
        headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'}
        return web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8", headers=headers)

    async def _read(self, view: UsageView, groups: list[UsageGrouping]) -> UsageData:
        until = datetime.now(UTC).date()
        since = until - timedelta(days=view.days - 1)
        try:
            by: dict[str, UsageReport] = {
                group: await read_usage(
                    self._store,
                    UsageFilter(
                        project_id=view.project_id,
                        token_id=view.token_id,
                        model=view.model,
                        since=since,
                        until=until,
                        group_by=group,
                    ),
                )
                for group in groups
            }
            projects = {p.id: p for p in await self._store.list_projects()}
            tokens = {t.id: t for t in await self._store.list_tokens(view.project_id)}
        except StoreUnavailable as exc:
            log.warning("admin UI: cannot read usage: %s", exc)
            raise ProxyError(
                Refusal.SERVICE_UNAVAILABLE, "The database is unavailable, try again later"
            ) from None
        return UsageData(
            project_id=view.project_id,
            token_id=view.token_id,
            model=view.model,
            days=view.days,
            until=until,
            by=by,
            projects=projects,
            tokens=tokens,
        )


def _as_dict(line: Any) -> dict[str, Any]:
    return {field: getattr(line, field) for field in line.__struct_fields__}


def _name(data: UsageData, group: str, key: str) -> str:
    if group == "project":
        project = data.projects.get(key)
        return project.name if project else ""
    if group == "token":
        token = data.tokens.get(key)
        return token_label(token, key) if token else ""
    return ""
