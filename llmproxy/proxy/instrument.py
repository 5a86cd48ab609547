"""Turns each finished Flow into the SPEC §6 Event and publishes it: the proxy's observer of traffic.

Building is cheap and runs on the loop (redaction, bounded decompression, a usage read from the body's
end). What is not cheap runs in a thread owned here: decoding all of a compressed answer longer than the
capture bound to read its usage, and token estimation when the upstream sent no usage.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import math
from datetime import UTC, datetime
from typing import Protocol

from llmproxy.codings import Undecodable, codings, inflate
from llmproxy.config import EventSettings
from llmproxy.events.model import Event, Usage
from llmproxy.ids import uuid4_text
from llmproxy.openai.kinds import endpoint_kind
from llmproxy.openai.tokencount import TokenCounter
from llmproxy.openai.usage import request_model, response_model, response_usage, usage_in
from llmproxy.proxy.estimator import Estimate, Estimator
from llmproxy.proxy.flow import Account, Flow
from llmproxy.redact import redact_headers, redact_query

__all__ = ("EventPublisher", "Instrumentation", "build_event", "decode_body", "exchange_usage", "rfc3339")

log = logging.getLogger(__name__)

# Flows that finish within HOLD_S of each other are built into events in one pass (at most
# HOLD_MAX at a time): back to back, the build and encode code stays in the CPU's caches, which it does
# not between two requests' aiohttp work (in the server, one event cost about twice what it costs in
# a loop). Events reach the bus at most 2 ms later; aclose builds what is held at once.
HOLD_S = 0.002
HOLD_MAX = 64


class EventPublisher(Protocol):
    def publish(self, event: Event) -> None: ...


_second: tuple[int, str] = (-1, "")  # the last whole second formatted: most events share it


def rfc3339(timestamp: float) -> str:
    """`2026-11-23T09:01:37.123456Z` for a time.time() value (microseconds rounded, as datetime does)."""
    global _second
    fraction, whole = math.modf(timestamp)  # split first, then round: exactly datetime's arithmetic
    second, micro = int(whole), round(fraction * 1_000_000)
    if micro == 1_000_000:
        second, micro = second + 1, 0
    cached, prefix = _second
    if second != cached:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (second, prefix)
    return f"{prefix}.{micro:06d}Z"


def decode_body(body: bytes, content_encoding: str, limit: int, truncated: bool) -> tuple[bytes, bool]:
    """The body with its Content-Encoding undone, never more than `limit` bytes: (bytes, truncated).

    A body that cannot be decoded (unknown or stacked codings, corrupt data) is returned as captured.
    """
    if not content_encoding or not body:  # the common case: nothing to undo
        return body, truncated
    applied = codings(content_encoding)
    if len(applied) != 1:
        return body, truncated
    try:
        inflated, more = inflate(body, applied[0], limit, partial=truncated)
    except Undecodable:
        return body, truncated
    return inflated, truncated or more


def _utf8(body: bytes, truncated: bool) -> str | None:
    try:
        return body.decode()
    except UnicodeDecodeError as exc:
        cut = (
            exc.start if truncated and exc.end == len(body) and exc.reason == "unexpected end of data" else -1
        )
    if cut < 0:
        return None
    try:  # the capture bound cut the last character in half: drop its first bytes
        return body[:cut].decode()
    except UnicodeDecodeError:
        return None


def build_event(flow: Flow, settings: EventSettings) -> tuple[Event, Estimate | None]:
    """The Event for an flow, and what to estimate its usage from when the upstream reported none."""
    request_headers = redact_headers(flow.request_headers)
    response_headers = redact_headers(flow.response_headers)
    request, request_truncated = decode_body(
        flow.request_body,
        request_headers.get("content-encoding", ""),
        settings.max_request_body_bytes,
        flow.request_body_truncated,
    )
    response, response_truncated = decode_body(
        flow.response_body,
        response_headers.get("content-encoding", ""),
        settings.max_response_body_bytes,
        flow.response_body_truncated,
    )
    request_text, response_text = _utf8(request, request_truncated), _utf8(response, response_truncated)
    binary = request_text is None or response_text is None  # one body_encoding covers both bodies
    coding = response_headers.get("content-encoding", "")
    model, usage, estimate = exchange_usage(flow, request, response, response_truncated, coding)
    event = Event(
        id=uuid4_text(),
        request_id=flow.request_id,
        project_id=flow.project_id,
        token_id=flow.token_id,
        method=flow.method,
        path=flow.path,
        query=redact_query(flow.query),
        status=flow.status,
        started_at=rfc3339(flow.started_at),
        duration_ms=round(flow.duration_ms, 1),
        ttfb_ms=None if flow.ttfb_ms is None else round(flow.ttfb_ms, 1),
        stream=flow.stream,
        model=model,
        usage=usage,
        usage_source=None if usage is None else "response",
        request_headers=request_headers,
        response_headers=response_headers,
        request_body=_b64(request) if binary else request_text or "",
        request_body_truncated=request_truncated,
        response_body=_b64(response) if binary else response_text or "",
        response_body_truncated=response_truncated,
        body_encoding="base64" if binary else "utf-8",
        error=flow.error,
        metadata=flow.grant.metadata,
    )
    return event, estimate


def exchange_usage(
    flow: Flow, request: bytes, response: bytes, response_truncated: bool, coding: str
) -> tuple[str | None, Usage | None, Estimate | None]:
    """(model, usage the upstream reported, what to estimate it from when it reported none) of a flow,
    from its bodies decoded (``decode_body``); ``coding`` is the response's Content-Encoding."""
    model = request_model(request) or response_model(response, flow.stream)
    if flow.error is not None or not 200 <= flow.status < 300:
        return model, None, None
    usage, encoded = None, b""
    if not response_truncated:
        usage = response_usage(response, flow.stream)
    elif flow.response_body_truncated or response is flow.response_body:
        # past the capture bound: the tail has the usage (a compressed one cannot be read, the head may)
        usage = usage_in(flow.response_tail) or usage_in(response)
    else:  # compressed, captured whole, cut once decoded: decoding it all is for the thread
        encoded = flow.response_body
    if usage is not None or flow.method != "POST" or endpoint_kind(flow.path) is None:
        return model, usage, None
    coding = coding.strip().lower() if encoded else ""
    return model, None, Estimate(flow.path, request, response, flow.stream, model, encoded, coding)


def _bare_event(flow: Flow) -> Event:
    """The event of an flow whose full event could not be built (a bug): what is known, nothing
    taken from headers, query or bodies, so that no secret can slip through."""
    return Event(
        id=uuid4_text(),
        request_id=flow.request_id,
        project_id=flow.project_id,
        token_id=flow.token_id,
        method=flow.method,
        path=flow.path,
        status=flow.status,
        started_at=rfc3339(flow.started_at),
        duration_ms=round(flow.duration_ms, 1),
        ttfb_ms=None if flow.ttfb_ms is None else round(flow.ttfb_ms, 1),
        stream=flow.stream,
        error=flow.error,
        metadata=flow.grant.metadata,
    )


def _b64(body: bytes) -> str:
    return base64.b64encode(body).decode("ascii")


class Instrumentation:
    """The proxy's Observer: one Event per finished flow, published without ever blocking or raising.

    Flows are held for up to HOLD_S and built together; one that cannot be built still gets a bare
    event. Counting tokens for usage-less responses happens in one owned thread. `aclose` publishes
    what waits.
    """

    def __init__(
        self,
        bus: EventPublisher,
        settings: EventSettings,
        *,
        counter: TokenCounter | None = None,
        account: Account | None = None,
    ) -> None:
        self._bus = bus
        self._settings = settings
        self._estimator = Estimator(settings.buffer_size, counter)
        self.account = account  # told the usage of every event published (usage accounting)
        self._held: list[Flow] = []
        self._timer: asyncio.TimerHandle | None = None  # builds what is held, on _timer_loop
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False  # after aclose: build at once, start no estimation thread
        self.failures = 0  # exchanges that became no event (a bug; logged) or that the bus refused
        self.estimated = 0  # events whose usage was counted locally
        self.unestimated = 0  # estimation skipped (backlog full) or impossible: published with usage null

    def __call__(self, flow: Flow) -> None:
        self._held.append(flow)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside a loop (a script): build right here, with what was held
            self._build_held()
            return
        if self._closed or len(self._held) >= HOLD_MAX:
            self._build_held()
        elif self._timer is None or self._timer_loop is not loop:  # (a loop that ended never fired it)
            self._timer, self._timer_loop = loop.call_later(HOLD_S, self._build_held), loop

    def _build_held(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, []
        for flow in held:
            self._observe(flow)

    def _observe(self, flow: Flow) -> None:
        try:
            event, estimate = build_event(flow, self._settings)
        except Exception:
            self.failures += 1
            log.exception("event for request %s published bare: building it failed", flow.request_id)
            try:
                self._publish(_bare_event(flow))
            except Exception:
                log.exception("no event for request %s", flow.request_id)
            return
        if estimate is None:
            self._publish(event)
        elif not self._estimate_later(event, estimate):
            self.unestimated += 1  # backlog full, or the loop is shutting down
            self._publish(event)

    def _estimate_later(self, event: Event, estimate: Estimate) -> bool:
        return self._estimator.submit(estimate, functools.partial(self._finish, event))

    def stats(self) -> dict[str, int]:
        return {
            "failures": self.failures,
            "estimated": self.estimated,
            "unestimated": self.unestimated,
            "estimating": self._estimator.pending,
        }

    async def aclose(self) -> None:
        """Publish the events held or still waiting for a token count, then stop the counting thread.
        Flows that come later are built and published at once, without estimation."""
        self._build_held()  # estimated like any other
        self._closed = True
        await self._estimator.aclose()

    def _finish(self, event: Event, usage: Usage | None, counted: bool) -> None:
        if usage is None:
            self.unestimated += 1
        elif counted:
            event.usage, event.usage_source = usage, "estimated"
            self.estimated += 1
        else:
            event.usage, event.usage_source = usage, "response"
        self._publish(event)

    def _publish(self, event: Event) -> None:
        account = self.account
        if account is not None:
            try:
                estimated = event.usage_source == "estimated"
                account(
                    event.token_id,
                    event.project_id,
                    event.started_at[:10],
                    event.model,
                    event.usage,
                    estimated,
                )
            except Exception:
                log.exception("usage of event %s not accounted", event.id)
        try:
            self._bus.publish(event)
        except Exception:
            self.failures += 1
            log.exception("the event bus refused event %s", event.id)
