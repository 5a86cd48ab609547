"""One event in full (``GET /admin/events/{id}?at=OFFSET``), drawn on the server: timings, usage and
its cost, the project and token by name, the headers (redacted again, whatever wrote the log) and the
request and response bodies exactly as captured. Bodies are the clients' and the upstream's text:
every byte of them goes through ``html.escape`` here, so a ``<script>`` in a prompt shows as text."""

from __future__ import annotations

import logging
import re
from html import escape

import msgspec
from aiohttp import web

from llmproxy.admin.event_log import read_event
from llmproxy.admin.markup import count, href, money, table
from llmproxy.admin.pages import Pages, html_response
from llmproxy.admin.usage_html import token_label
from llmproxy.errors import StoreUnavailable
from llmproxy.events.model import Event
from llmproxy.manage.schemas import UUID_PATTERN
from llmproxy.openai.prices import PriceTable
from llmproxy.redact import redact_headers, redact_query
from llmproxy.store.base import Project, Store, Token

__all__ = ("EventDetail", "event_markup")

log = logging.getLogger(__name__)

_UUID = re.compile(UUID_PATTERN)
_OFFSET = re.compile(r"[0-9]{1,18}")  # ASCII digits: str.isdigit would pass "²", which int() refuses


class EventDetail:
    """Finds the event at the offset the Events page linked to, and renders it."""

    def __init__(self, event_log: str | None, store: Store, prices: PriceTable | None, pages: Pages) -> None:
        self._event_log = event_log
        self._store = store
        self._prices = prices
        self._pages = pages

    async def page(self, request: web.Request, csrf_token: str) -> web.Response:
        event_id = request.match_info["event_id"]
        at = request.query.get("at", "")
        if not _UUID.match(event_id) or not _OFFSET.fullmatch(at):
            return self._message(
                "This link to an event is malformed: it needs the event's id and ?at=<byte offset>.", 422
            )
        if not self._event_log:
            return self._message("No event log is configured (FILE_EVENT_LOG): no event can be shown.", 404)
        try:
            event = await read_event(self._event_log, int(at), event_id.lower())
        except OSError as exc:
            log.warning("admin UI: cannot read the event log %s: %s", self._event_log, exc)
            return self._message("The event log cannot be read.", 503)
        if event is None:
            return self._message(
                "This event is no longer at that place in the event log (rotated or truncated since).", 404
            )
        project, token = await self._names(event)
        cost = self._cost(event)
        markup = event_markup(event, project, token, cost)
        return html_response(self._pages.page("event", csrf_token=csrf_token, markup=markup))

    def _message(self, text: str, status: int) -> web.Response:
        return html_response(self._pages.message("Event not shown", text), status)

    async def _names(self, event: Event) -> tuple[Project | None, Token | None]:
        if not (_UUID.match(event.project_id) and _UUID.match(event.token_id)):
            return None, None  # not ids the store could hold (PostgreSQL would refuse the query)
        try:
            return await self._store.get_project(event.project_id), await self._store.get_token(
                event.token_id
            )
        except StoreUnavailable as exc:  # the event is in the file: show it without the names
            log.warning("admin UI: cannot read names for an event: %s", exc)
            return None, None

    def _cost(self, event: Event) -> float | None:
        usage = event.usage
        if usage is None or self._prices is None:
            return None
        return self._prices.cost(
            event.model, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens
        )


def event_markup(
    event: Event, project: Project | None, token: Token | None, cost: float | None
) -> dict[str, str]:
    """The event template's trusted markup, by placeholder."""
    target = event.path + (f"?{redact_query(event.query)}" if event.query else "")
    return {
        "title": f"{escape(event.method)} <code>{escape(target)}</code> {_status(event.status)}",
        "facts": _facts(event, project, token, cost),
        "request_headers": _headers(event.request_headers, "request-headers"),
        "response_headers": _headers(event.response_headers, "response-headers"),
        "request_body": _body(
            event.request_body, event.request_body_truncated, event.body_encoding, "request"
        ),
        "response_body": _body(
            event.response_body, event.response_body_truncated, event.body_encoding, "response"
        ),
    }


def _status(status: int) -> str:
    kind = "bad" if status >= 500 else "warn" if status >= 400 else "ok"
    return f'<span class="badge {kind}">{status}</span>'


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f} ms"


def _facts(event: Event, project: Project | None, token: Token | None, cost: float | None) -> str:
    usage = event.usage
    if usage is None:
        tokens = "not reported"
    else:
        source = " (estimated by the proxy)" if event.usage_source == "estimated" else ""
        tokens = (
            f"{count(usage.prompt_tokens)} prompt ({count(usage.cached_tokens)} cached) + "
            f"{count(usage.completion_tokens)} completion = {count(usage.total_tokens)}{source}"
        )
    project_name = project.name if project else event.project_id
    project_link = (
        f'<a href="{href("/admin/usage", {"project_id": event.project_id})}">{escape(project_name)}</a>'
    )
    token_link = (
        f'<a href="{href("/admin/usage", {"token_id": event.token_id})}">'
        f"{escape(token_label(token, event.token_id))}</a>"
    )
    facts = [
        ("Started", f"<time>{escape(event.started_at)}</time>"),
        ("Duration", escape(_ms(event.duration_ms))),
        ("Time to first byte", escape(_ms(event.ttfb_ms))),
        ("Streamed", "yes" if event.stream else "no"),
        ("Model", escape(event.model or "—")),
        ("Tokens", escape(tokens)),
        (
            "Cost",
            escape(money(cost) if usage is not None and cost is not None else "unpriced" if usage else "—"),
        ),
        ("Project", project_link),
        ("Token", token_link),
        ("Request id", f"<code>{escape(event.request_id)}</code>"),
        ("Event id", f"<code>{escape(event.id)}</code>"),
    ]
    if event.metadata:
        facts.append(
            ("Token metadata", f"<code>{escape(msgspec.json.encode(event.metadata).decode())}</code>")
        )
    if event.error:
        facts.append(("Error", escape(event.error)))
    rows = "".join(f"<div><dt>{escape(label)}</dt><dd>{value}</dd></div>" for label, value in facts)
    return f'<dl class="facts" id="event-facts">{rows}</dl>'


def _headers(headers: dict[str, str], css_id: str) -> str:
    rows = [
        [f"<code>{escape(name)}</code>", f"<code>{escape(value)}</code>"]
        for name, value in redact_headers(headers).items()
    ]
    return table([("Name", False), ("Value", False)], rows, empty="No headers captured.", css_id=css_id)


def _body(body: str, truncated: bool, encoding: str, which: str) -> str:
    notes = []
    if encoding == "base64":
        notes.append("not text: shown base64-encoded, as captured")
    if truncated:
        notes.append("truncated at the capture limit (OBSERVABILITY_MAX_*_BODY_BYTES)")
    note = f'<p class="muted">{escape("; ".join(notes).capitalize())}.</p>' if notes else ""
    if not body:
        return note + '<p class="empty">No body captured.</p>'
    return f'{note}<pre class="body" id="{which}-body">{escape(body)}</pre>'
