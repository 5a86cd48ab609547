"""The metrics document and its Prometheus rendering, from known figures: exact exposition lines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import prometheus_client
import pytest

from llmproxy.config import ApiConfig
from llmproxy.metrics import (
    CacheFigures,
    DispatcherFigures,
    EndpointLabels,
    EventFigures,
    MetricsRegistry,
    PathCounts,
    RequestMetrics,
    Snapshot,
    status_class,
)
from llmproxy.server.observability import upstream_ttfb

CHAT = "/v1/chat/completions"


def render(snapshot: Snapshot) -> list[str]:
    return MetricsRegistry(lambda: snapshot).exposition().decode().splitlines()


def snapshot_of(requests: RequestMetrics, **fields: object) -> Snapshot:
    return Snapshot(
        uptime_seconds=12.5,
        requests=PathCounts.of(requests.requests),
        errors=PathCounts.of(requests.errors),
        request_duration_seconds=requests.duration.figures(),
        upstream_ttfb_seconds=requests.ttfb.figures(),
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
def requests() -> RequestMetrics:
    return RequestMetrics(ApiConfig().allowed_endpoints)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, "2xx"),
        (204, "2xx"),
        (301, "3xx"),
        (401, "4xx"),
        (499, "4xx"),
        (504, "5xx"),
        (99, "other"),
        (600, "other"),
    ],
)
def test_status_class_is_the_hundreds_digit(status: int, expected: str) -> None:
    assert status_class(status) == expected


@pytest.mark.parametrize(
    ("path", "label"),
    [
        (CHAT, CHAT),
        ("/v1/files", "/v1/files"),
        ("/v1/files/file-abc123/content", "/v1/files/*"),
        ("/v1/images/generations", "/v1/images/*"),
        ("/v1/images", "/v1/images/*"),
        ("/v1/chat/completions/extra", "other"),
        ("/v1/imagesX", "other"),
        ("/v2/anything", "other"),
        ("/", "other"),
    ],
)
def test_a_path_is_labelled_by_the_allowed_entry_it_matches(path: str, label: str) -> None:
    assert EndpointLabels(ApiConfig().allowed_endpoints)(path) == label


def test_an_empty_allow_list_labels_with_the_builtin_endpoints() -> None:
    labels = EndpointLabels(())
    assert labels(CHAT) == CHAT
    assert labels("/v1/custom/thing") == "other"


def test_requests_and_errors_render_as_exact_exposition_lines(requests: RequestMetrics) -> None:
    for _ in range(3):
        requests.count(CHAT, 200, 0.01)
    requests.count(CHAT, 401, 0.001)
    requests.count("/v1/files/file-secretish", 502, 0.2)
    lines = render(snapshot_of(requests))
    assert 'llm_proxy_requests_total{path="/v1/chat/completions",status_class="2xx"} 3.0' in lines
    assert 'llm_proxy_requests_total{path="/v1/chat/completions",status_class="4xx"} 1.0' in lines
    assert 'llm_proxy_requests_total{path="/v1/files/*",status_class="5xx"} 1.0' in lines
    assert 'llm_proxy_errors_total{path="/v1/chat/completions",status_class="4xx"} 1.0' in lines
    assert 'llm_proxy_errors_total{path="/v1/files/*",status_class="5xx"} 1.0' in lines
    assert not any(line.startswith("llm_proxy_errors_total") and '"2xx"' in line for line in lines)
    assert not any("file-secretish" in line for line in lines)


def test_duration_buckets_are_cumulative_and_a_value_on_a_bound_falls_in_it(requests: RequestMetrics) -> None:
    for seconds in (0.005, 0.02, 0.7, 400.0):
        requests.count(CHAT, 200, seconds)
    lines = render(snapshot_of(requests))
    prefix = "llm_proxy_request_duration_seconds"
    labels = 'path="/v1/chat/completions",status_class="2xx"'
    assert f'{prefix}_bucket{{le="0.005",{labels}}} 1.0' in lines
    assert f'{prefix}_bucket{{le="0.01",{labels}}} 1.0' in lines
    assert f'{prefix}_bucket{{le="0.025",{labels}}} 2.0' in lines
    assert f'{prefix}_bucket{{le="1.0",{labels}}} 3.0' in lines
    assert f'{prefix}_bucket{{le="300.0",{labels}}} 3.0' in lines
    assert f'{prefix}_bucket{{le="+Inf",{labels}}} 4.0' in lines
    assert f"{prefix}_count{{{labels}}} 4.0" in lines
    assert f"{prefix}_sum{{{labels}}} 400.725" in lines


def test_ttfb_is_observed_only_when_given(requests: RequestMetrics) -> None:
    requests.count(CHAT, 200, 0.5, 0.25)
    requests.count(CHAT, 401, 0.001)
    lines = render(snapshot_of(requests))
    assert (
        'llm_proxy_upstream_ttfb_seconds_count{path="/v1/chat/completions",status_class="2xx"} 1.0' in lines
    )
    assert 'llm_proxy_upstream_ttfb_seconds_sum{path="/v1/chat/completions",status_class="2xx"} 0.25' in lines
    assert not any(line.startswith("llm_proxy_upstream_ttfb_seconds") and '"4xx"' in line for line in lines)
    assert (
        'llm_proxy_request_duration_seconds_count{path="/v1/chat/completions",status_class="4xx"} 1.0'
        in lines
    )


def test_cache_events_uptime_and_tasks_render_as_single_samples() -> None:
    snapshot = Snapshot(
        uptime_seconds=42.0,
        cache=CacheFigures(enabled=True, hits=5, misses=4, bypass=3, stores=2),
        events=EventFigures(published=10, dropped=1, pending=2),
    )
    snapshot.process.tasks = 7
    lines = render(snapshot)
    for line in (
        "llm_proxy_uptime_seconds 42.0",
        "llm_proxy_cache_hits_total 5.0",
        "llm_proxy_cache_misses_total 4.0",
        "llm_proxy_cache_bypass_total 3.0",
        "llm_proxy_cache_stores_total 2.0",
        "llm_proxy_events_published_total 10.0",
        "llm_proxy_events_dropped_total 1.0",
        "llm_proxy_events_pending 2.0",
        "llm_proxy_tasks 7.0",
    ):
        assert line in lines


def test_dispatcher_counters_and_lag_render_per_service() -> None:
    snapshot = Snapshot(
        uptime_seconds=1.0,
        dispatchers={
            "file": DispatcherFigures(delivered=7, failed=1, retried=2, dead_lettered=3, lag=4, pending=1),
            "lunary": DispatcherFigures(delivered=9),
        },
    )
    lines = render(snapshot)
    for line in (
        'llm_proxy_dispatcher_delivered_total{service="file"} 7.0',
        'llm_proxy_dispatcher_failed_total{service="file"} 1.0',
        'llm_proxy_dispatcher_retried_total{service="file"} 2.0',
        'llm_proxy_dispatcher_dead_total{service="file"} 3.0',
        'llm_proxy_dispatcher_lag{service="file"} 4.0',
        'llm_proxy_dispatcher_pending{service="file"} 1.0',
        'llm_proxy_dispatcher_delivered_total{service="lunary"} 9.0',
    ):
        assert line in lines
    assert not any(line.startswith('llm_proxy_dispatcher_lag{service="lunary"}') for line in lines)


@pytest.mark.parametrize(
    ("redis_up", "line"), [(True, "llm_proxy_redis_up 1.0"), (False, "llm_proxy_redis_up 0.0")]
)
def test_redis_up_is_rendered_when_redis_is_used(redis_up: bool, line: str) -> None:
    assert line in render(Snapshot(uptime_seconds=1.0, redis_up=redis_up))


def test_without_redis_there_is_no_redis_up_gauge() -> None:
    assert not any(line.startswith("llm_proxy_redis_up") for line in render(Snapshot(uptime_seconds=1.0)))


def test_every_family_has_help_and_type_and_process_and_gc_are_included() -> None:
    text = "\n".join(render(Snapshot(uptime_seconds=1.0)))
    for name, kind in (
        ("llm_proxy_uptime_seconds", "gauge"),
        ("llm_proxy_requests_total", "counter"),
        ("llm_proxy_errors_total", "counter"),
        ("llm_proxy_request_duration_seconds", "histogram"),
        ("llm_proxy_upstream_ttfb_seconds", "histogram"),
        ("llm_proxy_cache_hits_total", "counter"),
        ("llm_proxy_events_published_total", "counter"),
        ("llm_proxy_dispatcher_delivered_total", "counter"),
        ("llm_proxy_dispatcher_lag", "gauge"),
        ("llm_proxy_tasks", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
        ("python_gc_collections_total", "counter"),
    ):
        assert f"# HELP {name} " in text
        assert f"# TYPE {name} {kind}\n" in text + "\n"


def test_each_registry_is_its_own_and_the_global_default_stays_empty_of_ours(
    requests: RequestMetrics,
) -> None:
    requests.count(CHAT, 200, 0.01)
    first = render(snapshot_of(requests))
    second = render(snapshot_of(RequestMetrics(())))
    assert 'llm_proxy_requests_total{path="/v1/chat/completions",status_class="2xx"} 1.0' in first
    assert not any(line.startswith("llm_proxy_requests_total{") for line in second)
    assert b"llm_proxy_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


def test_the_json_document_carries_the_same_figures(requests: RequestMetrics) -> None:
    requests.count(CHAT, 200, 0.01, 0.004)
    requests.count(CHAT, 429, 0.002)
    snapshot = snapshot_of(requests, dispatchers={"file": DispatcherFigures(delivered=2, lag=0, pending=0)})
    document = msgspec.json.decode(msgspec.json.encode(snapshot))
    assert document["requests"] == {"total": 2, "by_path": {CHAT: {"2xx": 1, "4xx": 1}}}
    assert document["errors"] == {"total": 1, "by_path": {CHAT: {"4xx": 1}}}
    [ttfb] = document["upstream_ttfb_seconds"]
    assert (ttfb["path"], ttfb["status_class"], ttfb["count"], ttfb["sum_seconds"]) == (CHAT, "2xx", 1, 0.004)
    assert ttfb["buckets"]["0.005"] == 1 and ttfb["buckets"]["+Inf"] == 1
    assert document["dispatchers"]["file"]["delivered"] == 2
    assert document["dispatchers"]["file"]["lag"] == 0


def test_process_figures_read_memory_and_gc_from_the_standard_collectors() -> None:
    figures = MetricsRegistry(lambda: Snapshot(uptime_seconds=0.0)).process_figures(tasks=3)
    assert figures.tasks == 3
    assert figures.resident_memory_bytes is not None and figures.resident_memory_bytes > 1_000_000
    assert [g.generation for g in figures.gc] == [0, 1, 2]


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("proxy;dur=0.500, upstream;dur=3.250", 0.00375),
        ("proxy;dur=1, upstream;dur=2", 0.003),
        ("cdn-cache;desc=HIT", None),
        ("proxy;dur=0.5", None),
        ("proxy;dur=x, upstream;dur=1", None),
        ("", None),
    ],
)
def test_upstream_ttfb_is_read_from_the_proxys_server_timing(header: str, seconds: float | None) -> None:
    assert upstream_ttfb(header) == (pytest.approx(seconds) if seconds is not None else None)


def test_every_metric_the_grafana_dashboard_and_alert_examples_query_is_exposed() -> None:
    root = Path(__file__).resolve().parents[2]
    dashboard = json.loads((root / "deploy/grafana/llm-proxy-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs.append((root / "deploy/prometheus/prometheus.yml").read_text())
    queried = {m for e in exprs for m in re.findall(r"\b((?:llm_proxy|process|python_gc)_[a-z_]+)", e)}
    requests = RequestMetrics(())
    requests.count(CHAT, 200, 0.1, 0.05)
    requests.count(CHAT, 502, 0.1)
    snapshot = snapshot_of(requests, dispatchers={"file": DispatcherFigures(lag=1, pending=0)}, redis_up=True)
    exposed = {line.split("{")[0].split(" ")[0] for line in render(snapshot) if not line.startswith("#")}
    assert queried and queried <= exposed, sorted(queried - exposed)
