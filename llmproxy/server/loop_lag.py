"""The event loop's lag: how late one timer a second fires, kept as a histogram for /metrics.

An instance holding thousands of open streams is bounded by how promptly its loop turns, not by
requests per second; a timer that measures its own delay is the cheapest honest measure of that
(one wake-up a second, a few µs). A stall delays the timer only when it was due inside the stall,
so the samples are the lag a callback scheduled at a random moment meets.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Sequence

from llmproxy.metrics import LagFigures

__all__ = ("LAG_BUCKETS", "LoopLag")

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LoopLag:
    """Seconds each tick of ``run`` fired after it was due; ``figures()`` for the metrics snapshot."""

    def __init__(self, interval: float = 1.0, buckets: Sequence[float] = LAG_BUCKETS) -> None:
        self.interval = interval
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, the last for values above every bound
        self.sum = 0.0
        self.last: float | None = None

    def observe(self, lag: float) -> None:
        self.counts[bisect_left(self.bounds, lag)] += 1
        self.sum += lag
        self.last = lag

    async def run(self) -> None:
        """Sleep ``interval``, note how late the wake-up came, forever (an owned task of the app).
        Timed with the monotonic clock: uvloop's ``loop.time()`` is cached per loop turn, in ms."""
        while True:
            due = time.monotonic() + self.interval
            await asyncio.sleep(self.interval)
            self.observe(max(0.0, time.monotonic() - due))

    def figures(self) -> LagFigures:
        cumulative: dict[str, int] = {}
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            cumulative["+Inf" if bound == float("inf") else repr(float(bound))] = running
        return LagFigures(count=running, sum_seconds=self.sum, last_seconds=self.last, buckets=cumulative)
