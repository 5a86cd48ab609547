"""Token estimation off the loop: one owned thread counts the usage of answers that reported none (or whose
usage sits at the end of a compressed body longer than the capture bound), with a bounded backlog.

Shared by the event builder (``instrument.py``) and the usage meter (``metering.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import msgspec

from llmproxy.events.model import Usage
from llmproxy.openai.estimate import estimate_usage
from llmproxy.openai.tokencount import TokenCounter
from llmproxy.openai.usage import usage_in
from llmproxy.proxy.capture import TAIL_BYTES, inflated_tail

__all__ = ("Estimate", "Estimated", "Estimator")

log = logging.getLogger(__name__)

Estimated = Callable[[Usage | None, bool], None]  # (usage, counted locally) when known


class Estimate(msgspec.Struct, frozen=True):
    """What token estimation needs, handed to the counting thread."""

    path: str
    request_body: bytes
    response_body: bytes
    stream: bool
    model: str | None
    encoded: bytes = b""  # a whole compressed answer that decodes past the bound: its usage is at its end
    coding: str = ""


class Estimator:
    """``submit(estimate, done)``: ``done(usage, counted)`` on the loop once counted; False when it cannot
    take more (backlog of ``limit`` full, or closed), and the caller goes on without usage."""

    def __init__(self, limit: int, counter: TokenCounter | None = None) -> None:
        self._limit = limit
        self._counter = counter if counter is not None else TokenCounter()
        self._executor: ThreadPoolExecutor | None = None
        self._pending: set[asyncio.Future[tuple[Usage | None, bool]]] = set()
        self.closed = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, estimate: Estimate, done: Estimated) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside a loop (a script): count right here
            done(*self.count(estimate))
            return True
        if self.closed or len(self._pending) >= self._limit:
            return False
        try:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmproxy-tokens")
            future = loop.run_in_executor(self._executor, self.count, estimate)
        except RuntimeError:
            log.warning("token estimation unavailable (shutting down) for %s", estimate.path)
            return False
        self._pending.add(future)
        future.add_done_callback(lambda f: self._counted(f, done))
        return True

    def _counted(self, future: asyncio.Future[tuple[Usage | None, bool]], done: Estimated) -> None:
        self._pending.discard(future)
        done(*((None, True) if future.cancelled() else future.result()))

    def count(self, estimate: Estimate) -> tuple[Usage | None, bool]:
        """(usage, whether it was counted locally): the upstream's, read from the end of the decoded
        answer, else the local count. Runs in the counting thread."""
        try:
            if estimate.encoded:
                tail = inflated_tail(estimate.encoded, estimate.coding, TAIL_BYTES)
                if (reported := usage_in(tail)) is not None:
                    return reported, False
            counted = estimate_usage(
                estimate.path,
                estimate.request_body,
                estimate.response_body,
                estimate.stream,
                estimate.model,
                self._counter,
            )
        except Exception:
            log.exception("token estimation failed for %s", estimate.path)
            return None, True
        return counted, True

    async def aclose(self) -> None:
        """Wait for the counts under way (their ``done`` called), then stop the thread; later submits fail."""
        self.closed = True
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
            await asyncio.sleep(0)  # let the done callbacks run
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
