"""Usage accounting of forwarded requests when no event is built (no dispatcher): the usage an event would
carry, read from the flow, for the tokens whose budget or TPM limit needs it (``Limits.metered``).

With events on, the event builder tells the ledger instead (``Instrumentation.account``), so a request is
read once either way, and a plain token's request with events off is never read at all.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from llmproxy.config import EventSettings
from llmproxy.events.model import Usage
from llmproxy.openai.tokencount import TokenCounter
from llmproxy.proxy.estimator import Estimate, Estimator
from llmproxy.proxy.flow import Account, Flow
from llmproxy.proxy.instrument import decode_body, exchange_usage, rfc3339

__all__ = ("Metering", "ledger_account")

log = logging.getLogger(__name__)

Record = Callable[[str, str, str, "str | None", "tuple[int, int, int] | None", bool], None]


def ledger_account(record: Record) -> Account:
    """An Account over ``Ledger.record``: the Usage struct as (prompt, completion, cached prompt) tokens."""

    def account(
        token_id: str, project_id: str, day: str, model: str | None, usage: Usage | None, estimated: bool
    ) -> None:
        counts = (
            None if usage is None else (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
        )
        record(token_id, project_id, day, model, counts, estimated)

    return account


class Metering:
    """The observer of metered flows: reads model and usage (estimating in a thread when the upstream
    reported none) and tells ``account``; never raises into the proxy."""

    def __init__(
        self, account: Account, settings: EventSettings, *, counter: TokenCounter | None = None
    ) -> None:
        self._account = account
        self._settings = settings
        self._estimator = Estimator(settings.buffer_size, counter)

    def __call__(self, flow: Flow) -> None:
        day = rfc3339(flow.started_at)[:10]
        try:
            model, usage, estimate = self._read(flow)
        except Exception:
            log.exception("usage of request %s not read: accounted without tokens", flow.request_id)
            model, usage, estimate = None, None, None
        if estimate is not None:
            done = functools.partial(self._account, flow.token_id, flow.project_id, day, model)
            if self._estimator.submit(estimate, done):
                return
        self._account(flow.token_id, flow.project_id, day, model, usage, False)

    def _read(self, flow: Flow) -> tuple[str | None, Usage | None, Estimate | None]:
        settings = self._settings
        coding = flow.response_headers.get("Content-Encoding", "")
        request, _ = decode_body(
            flow.request_body,
            flow.request_headers.get("Content-Encoding", ""),
            settings.max_request_body_bytes,
            flow.request_body_truncated,
        )
        response, truncated = decode_body(
            flow.response_body, coding, settings.max_response_body_bytes, flow.response_body_truncated
        )
        return exchange_usage(flow, request, response, truncated, coding)

    async def aclose(self) -> None:
        """Account the requests still being estimated, then stop the counting thread."""
        await self._estimator.aclose()
