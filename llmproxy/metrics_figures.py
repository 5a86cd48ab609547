"""The metrics document's parts: what /metrics renders as JSON and /metrics/prometheus as text."""

from __future__ import annotations

import msgspec

__all__ = (
    "CacheFigures",
    "DispatcherFigures",
    "EventFigures",
    "GcGeneration",
    "HistogramFigures",
    "LagFigures",
    "PathCounts",
    "ProcessFigures",
    "Snapshot",
)


class PathCounts(msgspec.Struct, kw_only=True):
    total: int = 0
    by_path: dict[str, dict[str, int]] = {}  # path label -> status class -> count

    @classmethod
    def of(cls, counts: dict[tuple[str, str], int]) -> PathCounts:
        by_path: dict[str, dict[str, int]] = {}
        for (path, klass), n in sorted(counts.items()):
            by_path.setdefault(path, {})[klass] = n
        return cls(total=sum(counts.values()), by_path=by_path)


class HistogramFigures(msgspec.Struct):
    path: str
    status_class: str
    count: int
    sum_seconds: float
    buckets: dict[str, int]  # upper bound ("+Inf" last) -> cumulative count


class CacheFigures(msgspec.Struct, kw_only=True):
    enabled: bool = False
    hits: int = 0
    misses: int = 0
    bypass: int = 0
    stores: int = 0


class EventFigures(msgspec.Struct, kw_only=True):
    published: int = 0
    dropped: int = 0
    spilled: int = 0  # held locally while Redis was unreachable
    pending: int = 0  # waiting in this process to be written to the bus
    stream_length: int | None = None  # Redis: entries in the stream (or list)


class DispatcherFigures(msgspec.Struct, kw_only=True):
    delivered: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    lag: int | None = None  # events not yet delivered by this service (unread + pending); None: unknown
    pending: int | None = None  # read by a worker, not yet acknowledged
    reports: int = 0  # worker processes whose counters are summed (Redis buses)


class LagFigures(msgspec.Struct, kw_only=True):
    """The event loop's lag histogram (server/loop_lag.py): one sample a second."""

    count: int
    sum_seconds: float
    last_seconds: float | None
    buckets: dict[str, int]  # upper bound ("+Inf" last) -> cumulative count


class GcGeneration(msgspec.Struct):
    generation: int
    collections: int
    collected: int
    uncollectable: int


class ProcessFigures(msgspec.Struct, kw_only=True):
    tasks: int = 0
    resident_memory_bytes: int | None = None
    cpu_seconds: float | None = None
    open_fds: int | None = None
    gc: list[GcGeneration] = []


class Snapshot(msgspec.Struct, kw_only=True):
    """Every figure of the server at one moment; /metrics is this as JSON."""

    uptime_seconds: float
    requests: PathCounts = msgspec.field(default_factory=PathCounts)
    errors: PathCounts = msgspec.field(default_factory=PathCounts)
    request_duration_seconds: list[HistogramFigures] = []
    upstream_ttfb_seconds: list[HistogramFigures] = []
    bad_requests: dict[str, int] = {}  # reason -> count (BAD_REQUEST_REASONS)
    refusals: dict[str, int] = {}  # error.code -> proxy requests refused with it
    unpriced_requests: dict[str, int] = {}  # model -> requests with tokens whose cost is unknown
    cache: CacheFigures = msgspec.field(default_factory=CacheFigures)
    events: EventFigures = msgspec.field(default_factory=EventFigures)
    dispatchers: dict[str, DispatcherFigures] = {}
    redis_up: bool | None = None  # None: the event bus does not use Redis
    process: ProcessFigures = msgspec.field(default_factory=ProcessFigures)
    event_loop_lag: LagFigures | None = None


# --- Prometheus rendering -----------------------------------------------------------------------------
