"""The event-loop lag probe: a stalled loop shows as a late tick, rendered as a Prometheus histogram."""

from __future__ import annotations

import asyncio
import contextlib
import time

from llmproxy.metrics import MetricsRegistry, Snapshot
from llmproxy.server.loop_lag import LoopLag


async def test_a_loop_blocked_past_the_tick_is_measured_as_lag_at_least_that_long() -> None:
    probe = LoopLag(interval=0.01)
    task = asyncio.get_running_loop().create_task(probe.run())
    try:
        deadline = time.monotonic() + 5
        while probe.figures().count < 1 and time.monotonic() < deadline:  # one tick seen: the next is due
            await asyncio.sleep(0.005)
        seen = probe.figures().count
        time.sleep(0.01 + 0.1)  # the loop is blocked past the next tick's due time by at least 0.1 s
        while probe.figures().count == seen and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert probe.last is not None and probe.last >= 0.1
    assert probe.figures().buckets["0.05"] < probe.figures().count  # the stall is above 50 ms


def test_the_lag_is_a_histogram_in_the_prometheus_rendering() -> None:
    probe = LoopLag()
    for lag in (0.0005, 0.003, 0.03, 7.0):
        probe.observe(lag)
    snapshot = Snapshot(uptime_seconds=1.0, event_loop_lag=probe.figures())
    lines = MetricsRegistry(lambda: snapshot).exposition().decode().splitlines()
    assert "# TYPE llm_proxy_event_loop_lag_seconds histogram" in lines
    assert 'llm_proxy_event_loop_lag_seconds_bucket{le="0.001"} 1.0' in lines
    assert 'llm_proxy_event_loop_lag_seconds_bucket{le="0.005"} 2.0' in lines
    assert 'llm_proxy_event_loop_lag_seconds_bucket{le="0.05"} 3.0' in lines
    assert 'llm_proxy_event_loop_lag_seconds_bucket{le="5.0"} 3.0' in lines
    assert 'llm_proxy_event_loop_lag_seconds_bucket{le="+Inf"} 4.0' in lines
    assert "llm_proxy_event_loop_lag_seconds_count 4.0" in lines
    assert probe.figures().last_seconds == 7.0
