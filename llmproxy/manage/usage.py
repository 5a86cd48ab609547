"""GET /manage/usage: the daily usage rows summed by day, model, token or project, filtered by ids, model
and an inclusive range of UTC days. Rows are written by every instance's 1 s flush (issue 17 §1)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from aiohttp import web
from msgspec import Meta, Struct

from llmproxy.manage.decoding import decode_query
from llmproxy.manage.edge import json_response, method_not_allowed
from llmproxy.manage.guard import Guard
from llmproxy.manage.schemas import Uuid
from llmproxy.store.base import Store, UsageGroup, UsageGrouping, UsageQuery
from llmproxy.store.spend_rows import USAGE_SUMS

__all__ = ("UsageAPI", "UsageFilter", "UsageLine", "UsageReport", "read_usage", "usage_report")

Day = Annotated[date, Meta(description="a UTC day, YYYY-MM-DD (inclusive)")]
_COST_DIGITS = 8  # sums of floats: 0.30000000000000004 would be a lie of precision


class UsageFilter(Struct, kw_only=True, forbid_unknown_fields=True):
    """Query of ``GET /manage/usage``."""

    project_id: Uuid | None = None
    token_id: Uuid | None = None
    model: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    since: Day | None = None
    until: Day | None = None
    group_by: UsageGrouping = "day"

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError("since is after until")


class UsageLine(Struct, kw_only=True):
    """One group's usage; ``cost_usd`` is null when none of its requests' models has a known price."""

    key: Annotated[
        str, Meta(description="the day (YYYY-MM-DD), model ('' when none was named), token id or project id")
    ]
    project_id: Annotated[str | None, Meta(description="the token's project (group_by=token), else null")]
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: Annotated[int, Meta(description="prompt tokens the upstream reported as cached")]
    cost_usd: float | None
    unpriced_requests: Annotated[int, Meta(description="requests with tokens whose model has no price")]
    estimated_requests: Annotated[int, Meta(description="requests whose tokens were counted by the proxy")]


class UsageReport(Struct, kw_only=True):
    """Answer of ``GET /manage/usage``: the groups in key order, and their sum."""

    group_by: UsageGrouping
    since: date | None
    until: date | None
    groups: list[UsageLine]
    total: UsageLine


def _line(group: UsageGroup) -> UsageLine:
    unpriced = group.unpriced_requests > 0 and group.unpriced_requests >= group.requests
    return UsageLine(
        key=group.key,
        project_id=group.project_id,
        requests=group.requests,
        prompt_tokens=group.prompt_tokens,
        completion_tokens=group.completion_tokens,
        total_tokens=group.prompt_tokens + group.completion_tokens,
        cached_tokens=group.cached_tokens,
        cost_usd=None if unpriced else round(group.cost_usd, _COST_DIGITS),
        unpriced_requests=group.unpriced_requests,
        estimated_requests=group.estimated_requests,
    )


def usage_report(query: UsageFilter, groups: list[UsageGroup]) -> UsageReport:
    total = UsageGroup(key="total")
    for g in groups:
        for name in USAGE_SUMS:
            setattr(total, name, getattr(total, name) + getattr(g, name))
    return UsageReport(
        group_by=query.group_by,
        since=query.since,
        until=query.until,
        groups=[_line(g) for g in groups],
        total=_line(total),
    )


async def read_usage(store: Store, query: UsageFilter) -> UsageReport:
    """The report ``GET /manage/usage`` answers for ``query`` (the admin UI's Usage page reads it too)."""
    groups = await store.usage_report(
        UsageQuery(
            project_id=query.project_id.lower() if query.project_id else None,
            token_id=query.token_id.lower() if query.token_id else None,
            model=query.model,
            since=query.since,
            until=query.until,
            group_by=query.group_by,
        )
    )
    return usage_report(query, groups)


class UsageAPI:
    """The usage route, behind the management API's guard."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def routes(self, guard: Guard) -> list[web.RouteDef]:
        return [
            web.get("/manage/usage", guard(self.usage)),
            web.route("*", "/manage/usage", guard(method_not_allowed("GET, HEAD"))),
        ]

    async def usage(self, request: web.Request) -> web.Response:
        return json_response(await read_usage(self._store, decode_query(request.query, UsageFilter)))
