"""Per-request counters and histograms, the metrics document, and its Prometheus rendering.

Only ``RequestMetrics`` is touched per request: plain ints and bucket lists owned by the event loop (no
locks; 5-9x cheaper than prometheus_client's labelled Histogram). Everything else is read from the
components when scraped, gathered into one ``Snapshot`` that both /metrics and /metrics/prometheus render.
"""

from __future__ import annotations

import gc
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from llmproxy.config import ApiConfig
from llmproxy.metrics_figures import (
    CacheFigures,
    DispatcherFigures,
    EventFigures,
    GcGeneration,
    HistogramFigures,
    LagFigures,
    PathCounts,
    ProcessFigures,
    Snapshot,
)

__all__ = (
    "BAD_REQUEST_REASONS",
    "DURATION_BUCKETS",
    "OTHER_PATH",
    "BadRequests",
    "CacheFigures",
    "DispatcherFigures",
    "EndpointLabels",
    "EventFigures",
    "HistogramFigures",
    "LagFigures",
    "MetricsRegistry",
    "PathCounts",
    "ProcessFigures",
    "RequestMetrics",
    "Snapshot",
    "SnapshotCollector",
    "status_class",
)

OTHER_PATH = "other"
# LLM calls take seconds to minutes: the buckets reach 5 minutes (the upstream's default request timeout).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
# Why the HTTP edge refused a request: a fixed set, so no label value is ever text a client chose.
# send_timeout: a client that took none of its answer for CLIENT_SEND_TIMEOUT (disconnected)
BAD_REQUEST_REASONS = (
    "bad_request_line", "bad_header", "bad_framing", "too_large", "timeout", "malformed", "send_timeout",
)  # fmt: skip


def status_class(status: int) -> str:
    """``"2xx"`` for 200…299; ``"other"`` outside 100…599."""
    return _CLASSES[status // 100] if 100 <= status < 600 else "other"


class EndpointLabels:
    """Maps a request path to a bounded label: the allowed-endpoint entry it matches, else ``"other"``.

    ``/v1/files/file-abc`` is labelled ``/v1/files/*``: ids never become label values. An empty allow-list
    (any endpoint allowed) labels with the built-in OpenAI list.
    """

    def __init__(self, allowed_endpoints: Sequence[str]) -> None:
        entries = tuple(allowed_endpoints) or ApiConfig().allowed_endpoints
        self._exact = frozenset(e for e in entries if not e.endswith("/*"))
        self._prefixes = tuple((e[:-2], e[:-1], e) for e in entries if e.endswith("/*"))

    def __call__(self, path: str) -> str:
        if path in self._exact:
            return path
        for prefix, prefix_slash, label in self._prefixes:
            if path.startswith(prefix_slash) or path == prefix:
                return label
        return OTHER_PATH

    @property
    def labels(self) -> tuple[str, ...]:
        return (*sorted(self._exact), *(label for *_, label in self._prefixes), OTHER_PATH)


def _bound(value: float) -> str:
    """A bucket's upper bound as Prometheus spells it: ``0.005``, ``1.0``, ``+Inf``."""
    return "+Inf" if value == float("inf") else repr(float(value))


class _Series:
    """One histogram series: per-bucket (non-cumulative) counts, the last one for values above every bound."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * (size + 1)
        self.sum = 0.0


class _Histograms:
    """A histogram labelled (path, status_class); a value lands in the first bucket whose bound is >= it."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.series: dict[tuple[str, str], _Series] = {}

    def observe(self, labels: tuple[str, str], value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = _Series(len(self.bounds))
        series.counts[bisect_left(self.bounds, value)] += 1
        series.sum += value

    def figures(self) -> list[HistogramFigures]:
        result = []
        for (path, klass), series in sorted(self.series.items()):
            cumulative: dict[str, int] = {}
            running = 0
            for bound, count in zip((*self.bounds, float("inf")), series.counts, strict=True):
                running += count
                cumulative[_bound(bound)] = running
            result.append(HistogramFigures(path, klass, running, series.sum, cumulative))
        return result


class RequestMetrics:
    """What the server observes per proxy request. Loop-confined: call only from the event loop thread."""

    def __init__(self, allowed_endpoints: Sequence[str], buckets: Sequence[float] = DURATION_BUCKETS) -> None:
        self.label = EndpointLabels(allowed_endpoints)
        self.requests: dict[tuple[str, str], int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.duration = _Histograms(buckets)
        self.ttfb = _Histograms(buckets)
        self.refusals: dict[str, int] = {}  # error.code -> count; codes are errors.Refusal's (bounded)

    def refused(self, code: str) -> None:
        """A request the proxy refused itself, by its ``error.code``."""
        self.refusals[code] = self.refusals.get(code, 0) + 1

    def count(self, path: str, status: int, duration_s: float, ttfb_s: float | None = None) -> None:
        """One answered request (``path`` as requested): its count, an error if >= 400, its duration and,
        when it was forwarded, the time to the upstream's response headers."""
        labels = (self.label(path), _CLASSES[status // 100] if 100 <= status < 600 else "other")
        self.requests[labels] = self.requests.get(labels, 0) + 1
        if status >= 400:
            self.errors[labels] = self.errors.get(labels, 0) + 1
        self.duration.observe(labels, duration_s)
        if ttfb_s is not None:
            self.ttfb.observe(labels, ttfb_s)


class BadRequests:
    """Requests the HTTP edge refused, by reason: malformed HTTP (400) or a client too slow (timeout)."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(BAD_REQUEST_REASONS, 0)

    def count(self, reason: str) -> None:
        self.counts[reason] += 1


# --- the document both renderings are made of ------------------------------------------------------


def _path_counter(name: str, help_text: str, counts: PathCounts) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=("path", "status_class"))
    for path, classes in counts.by_path.items():
        for klass, n in classes.items():
            family.add_metric((path, klass), n)
    return family


def _histogram(name: str, help_text: str, figures: list[HistogramFigures]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help_text, labels=("path", "status_class"))
    for h in figures:
        family.add_metric((h.path, h.status_class), list(h.buckets.items()), h.sum_seconds)
    return family


def _dispatcher_family(
    snapshot: Snapshot,
    kind: type[CounterMetricFamily | GaugeMetricFamily],
    name: str,
    help_text: str,
    value: Callable[[DispatcherFigures], float | None],
) -> Metric:
    family = kind(name, help_text, labels=("service",))
    for service, figures in sorted(snapshot.dispatchers.items()):
        v = value(figures)
        if v is not None:
            family.add_metric((service,), v)
    return family


def prometheus_families(snapshot: Snapshot) -> Iterable[Metric]:
    """The llm_proxy_* families of SPEC §9 for one snapshot."""
    s = snapshot
    yield GaugeMetricFamily(
        "llm_proxy_uptime_seconds", "Seconds since the server started", value=s.uptime_seconds
    )
    yield _path_counter(
        "llm_proxy_requests_total", "Proxy requests answered, by endpoint and status class", s.requests
    )
    yield _path_counter("llm_proxy_errors_total", "Proxy requests answered with status >= 400", s.errors)
    yield _histogram(
        "llm_proxy_request_duration_seconds",
        "Proxy request duration, arrival to last byte",
        s.request_duration_seconds,
    )
    yield _histogram(
        "llm_proxy_upstream_ttfb_seconds",
        "Arrival to upstream response headers (forwarded requests)",
        s.upstream_ttfb_seconds,
    )
    bad = CounterMetricFamily(
        "llm_proxy_bad_requests_total",
        "Requests refused at the HTTP edge: malformed or too slow",
        labels=("reason",),
    )
    for reason, n in s.bad_requests.items():
        bad.add_metric((reason,), n)
    yield bad
    refusals = CounterMetricFamily(
        "llm_proxy_refusals_total", "Proxy requests the proxy refused itself, by error.code", labels=("code",)
    )
    for code, n in sorted(s.refusals.items()):
        refusals.add_metric((code,), n)
    yield refusals
    unpriced = CounterMetricFamily(
        "llm_proxy_unpriced_requests_total",
        "Requests with token usage for a model no price is known for (cost null), by model",
        labels=("model",),
    )
    for model, n in sorted(s.unpriced_requests.items()):
        unpriced.add_metric((model,), n)
    yield unpriced
    for field, help_text in (
        ("hits", "Requests answered from the response cache"),
        ("misses", "Cacheable lookups that found nothing"),
        ("bypass", "Requests that skipped the cache (no-store, no-cache)"),
        ("stores", "Responses stored in the cache"),
    ):
        yield CounterMetricFamily(f"llm_proxy_cache_{field}_total", help_text, value=getattr(s.cache, field))
    yield CounterMetricFamily(
        "llm_proxy_events_published_total", "Events handed to the event bus", value=s.events.published
    )
    yield CounterMetricFamily(
        "llm_proxy_events_dropped_total", "Events lost: buffer overflow or shutdown", value=s.events.dropped
    )
    yield GaugeMetricFamily(
        "llm_proxy_events_pending", "Events waiting in this process for the bus", value=s.events.pending
    )
    for name, help_text, value in (
        ("delivered", "Events a dispatcher's backend accepted", lambda d: d.delivered),
        ("failed", "Events left for redelivery after the retry budget", lambda d: d.failed),
        ("retried", "Event sends retried after a transient failure", lambda d: d.retried),
        ("dead", "Events moved to the dead-letter stream", lambda d: d.dead_lettered),
    ):
        yield _dispatcher_family(
            s, CounterMetricFamily, f"llm_proxy_dispatcher_{name}_total", help_text, value
        )
    yield _dispatcher_family(
        s,
        GaugeMetricFamily,
        "llm_proxy_dispatcher_lag",
        "Events not yet delivered (unread + pending)",
        lambda d: d.lag,
    )
    yield _dispatcher_family(
        s,
        GaugeMetricFamily,
        "llm_proxy_dispatcher_pending",
        "Events read but not acknowledged",
        lambda d: d.pending,
    )
    if s.redis_up is not None:
        yield GaugeMetricFamily(
            "llm_proxy_redis_up", "1 if Redis answered this scrape", value=int(s.redis_up)
        )
    yield GaugeMetricFamily("llm_proxy_tasks", "asyncio tasks in the server process", value=s.process.tasks)
    if (lag := s.event_loop_lag) is not None:
        family = HistogramMetricFamily("llm_proxy_event_loop_lag_seconds", "How late a 1 s timer fires")
        family.add_metric((), list(lag.buckets.items()), lag.sum_seconds)
        yield family


class SnapshotCollector(Collector):
    """A custom collector: renders whatever ``source()`` returns at collect time (pull, never push)."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return prometheus_families(self._source())


class MetricsRegistry:
    """One app's registry (never the global default): the snapshot, plus process and GC collectors."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._process = ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(SnapshotCollector(source))

    def exposition(self) -> bytes:
        """The Prometheus text format (``prometheus_client.CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)

    def process_figures(self, tasks: int) -> ProcessFigures:
        """The process and GC figures the Prometheus rendering takes from the standard collectors."""
        figures = ProcessFigures(tasks=tasks)
        for family in self._process.collect():
            for sample in family.samples:
                if sample.name == "process_resident_memory_bytes":
                    figures.resident_memory_bytes = int(sample.value)
                elif sample.name == "process_cpu_seconds_total":
                    figures.cpu_seconds = sample.value
                elif sample.name == "process_open_fds":
                    figures.open_fds = int(sample.value)
        figures.gc = [
            GcGeneration(i, s["collections"], s["collected"], s["uncollectable"])
            for i, s in enumerate(gc.get_stats())
        ]
        return figures
