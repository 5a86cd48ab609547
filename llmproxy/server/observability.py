"""/metrics (JSON) and /metrics/prometheus, and the glue that reads every component's counters when scraped.

Per request only ``RequestMetrics`` is touched, by one middleware; the bus, the cache, the
dispatchers and the process are read at scrape time. With a Redis bus the dispatcher counters are the sum
of what every worker process reports into ``stats_key``, and lag comes from the stream's consumer groups.
Both routes are unauthenticated (scrapers rarely carry tokens) and no label or value is a secret or an id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from llmproxy.config_sections import ObservabilitySettings
from llmproxy.context import ERROR_CODE
from llmproxy.events.memory import InMemoryBus
from llmproxy.metrics import (
    BadRequests,
    CacheFigures,
    DispatcherFigures,
    EventFigures,
    MetricsRegistry,
    PathCounts,
    ProcessFigures,
    RequestMetrics,
    Snapshot,
)
from llmproxy.redis_client import connect_redis
from llmproxy.redis_keys import group_name, list_key, stats_key, totals_key
from llmproxy.server.loop_lag import LoopLag

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from llmproxy.server.pipeline import EventPipeline

__all__ = ("Observability", "upstream_ttfb")

log = logging.getLogger(__name__)

REDIS_TIMEOUT = 1.0  # a scrape never waits longer than this for Redis
# The server's own routes: not proxy traffic, so not counted in llm_proxy_requests_total.
_OWN_PATHS = ("/manage", "/admin", "/health", "/live", "/ready", "/metrics", "/")
_OWN_PREFIXES = tuple(p + "/" for p in _OWN_PATHS if p != "/")  # "/", the home page, is no prefix
_CLIENT_CLOSED = 499  # nginx's "client closed request": the client went away before the answer


class _CacheCounters(Protocol):
    hits: int
    misses: int
    bypass: int
    stores: int


class CountingCache(Protocol):
    """What is read from the response cache: its ``stats`` counters (``cache.http_cache.CacheStats``)."""

    @property
    def stats(self) -> _CacheCounters: ...


class _WorkerReport(msgspec.Struct):
    """One worker's counters as it reports them (DispatchStats + "at"); other fields are ignored."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0
    dead_lettered: int = 0


_decode_report = msgspec.json.Decoder(_WorkerReport)
_COUNTED = frozenset({"delivered", "dead_lettered", "retried", "failed"})  # fields of totals_key()


class _RedisFigures:
    """What the last scrape read from Redis; totals survive a failed read (counters never go back)."""

    def __init__(self) -> None:
        self.up: bool | None = None
        self.totals: dict[str, DispatcherFigures] = {}
        self.backlog: dict[str, tuple[int | None, int | None]] = {}  # service -> (lag, pending)
        self.stream_length: int | None = None


class Observability:
    """Counts proxy requests, and serves everything the server knows as JSON and Prometheus text."""

    def __init__(
        self,
        settings: ObservabilitySettings,
        pipeline: EventPipeline,
        *,
        cache: CountingCache | None = None,
        bad_requests: BadRequests | None = None,
        unpriced: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = settings.bus  # where the workers' reports and the stream's backlog are read
        self._unpriced = unpriced if unpriced is not None else {}  # the ledger's, by model
        self._bad_requests = bad_requests or BadRequests()  # counted by the runner's protocol (edge.py)
        self._pipeline = pipeline
        self._cache = cache
        self._clock = clock
        self._started = clock()
        self.requests = RequestMetrics(settings.allowed_endpoints)
        self.registry = MetricsRegistry(self.snapshot)
        self._redis_bus = not pipeline.in_process
        self._redis: Redis | None = None
        self._remote = _RedisFigures()
        self.loop_lag = LoopLag()

    def install(self, app: web.Application) -> None:
        """Add the routes (call before the proxy's catch-all), the counting middleware (outermost, so it
        sees the final status of refusals too), the loop-lag timer and the Redis client's cleanup."""
        app.add_routes(self.routes())
        app.middlewares.insert(0, self.middleware)
        app.cleanup_ctx.extend([self._loop_lag_ctx, self._redis_ctx])

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/metrics", self.json_metrics),
            web.get("/metrics/prometheus", self.prometheus_metrics),
        ]

    # --- per request -------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in _OWN_PATHS or path.startswith(_OWN_PREFIXES):
            return await handler(request)
        started = perf_counter()
        status = 500
        ttfb = None
        try:
            response = await handler(request)
            status = response.status
            if status >= 400 and (code := request.get(ERROR_CODE)) is not None:
                self.requests.refused(code)
            timings = response.headers.getall("Server-Timing", None)
            if timings is not None:
                ttfb = upstream_ttfb(timings[-1])
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = _CLIENT_CLOSED
            raise
        finally:
            self.requests.count(path, status, perf_counter() - started, ttfb)

    # --- routes ------------------------------------------------------------------------------

    async def json_metrics(self, request: web.Request) -> web.Response:
        await self.refresh()
        snapshot = self.snapshot()
        snapshot.process = self.registry.process_figures(snapshot.process.tasks)
        return web.Response(body=msgspec.json.encode(snapshot), content_type="application/json")

    async def prometheus_metrics(self, request: web.Request) -> web.Response:
        await self.refresh()
        return web.Response(body=self.registry.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # --- pulling the figures -----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Every figure now; what lives in Redis as of the last ``refresh``."""
        r = self.requests
        bus = self._pipeline.bus.stats()
        return Snapshot(
            uptime_seconds=round(self._clock() - self._started, 3),
            requests=PathCounts.of(r.requests),
            errors=PathCounts.of(r.errors),
            request_duration_seconds=r.duration.figures(),
            upstream_ttfb_seconds=r.ttfb.figures(),
            bad_requests=dict(self._bad_requests.counts),
            refusals=dict(r.refusals),
            unpriced_requests=dict(self._unpriced),
            cache=self._cache_figures(),
            events=EventFigures(
                published=bus.get("published", 0),
                dropped=bus.get("dropped", 0),
                spilled=bus.get("spilled", 0),
                pending=bus.get("pending", 0),
                stream_length=self._remote.stream_length,
            ),
            dispatchers=self._remote_dispatchers() if self._redis_bus else self._local_dispatchers(),
            redis_up=self._remote.up,
            process=ProcessFigures(tasks=_task_count()),
            event_loop_lag=self.loop_lag.figures(),
        )

    def _cache_figures(self) -> CacheFigures:
        if self._cache is None:
            return CacheFigures()
        s = self._cache.stats
        return CacheFigures(enabled=True, hits=s.hits, misses=s.misses, bypass=s.bypass, stores=s.stores)

    def _local_dispatchers(self) -> dict[str, DispatcherFigures]:
        """In-memory bus: the dispatcher tasks' own counters; lag is what waits in each service's queue."""
        stats = self._pipeline.stats
        bus = self._pipeline.bus
        queued = bus.queued_by_subscriber() if isinstance(bus, InMemoryBus) else {}
        return {
            service: DispatcherFigures(
                delivered=s.delivered,
                failed=s.failed,
                retried=s.retried,
                dead_lettered=s.dead_lettered,
                lag=queued.get(service),
                pending=0,
                reports=1,
            )
            for service, s in stats.items()
        }

    def _remote_dispatchers(self) -> dict[str, DispatcherFigures]:
        remote = self._remote
        services = {*self._pipeline.services, *remote.totals, *remote.backlog}
        result = {}
        for service in sorted(services):
            figures = msgspec.structs.replace(remote.totals.get(service) or DispatcherFigures())
            figures.lag, figures.pending = remote.backlog.get(service, (None, None))
            result[service] = figures
        return result

    async def refresh(self) -> None:
        """Read the workers' reports and the backlog from Redis (bounded by REDIS_TIMEOUT). Redis down:
        ``redis_up`` false, no backlog, the last totals kept."""
        if not self._redis_bus:
            return
        try:
            results = await asyncio.wait_for(self._read_redis(), REDIS_TIMEOUT)
        except (RedisError, OSError, TimeoutError) as exc:
            if self._remote.up is not False:
                log.warning("metrics: Redis unreachable at %s (%s)", self._bus.redis.addr, type(exc).__name__)
            self._remote.up = False
            self._remote.backlog = {}
            self._remote.stream_length = None
            return
        self._remote.up = True
        self._apply(*results)

    async def _read_redis(self) -> list[Any]:
        if self._redis is None:
            self._redis = connect_redis(self._bus.redis, socket_timeout=REDIS_TIMEOUT)
        stream = self._bus.streams.key
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(stats_key(stream))
        pipe.hgetall(totals_key(stream))
        if self._bus.kind == "redis-streams":
            pipe.xlen(stream)
            pipe.xinfo_groups(stream)
        else:  # the list bus: services share one list, nothing is pending
            pipe.llen(list_key(stream))
        results = await pipe.execute(raise_on_error=False)
        for result in results[:2]:
            if isinstance(result, Exception):
                raise result
        return results

    def _apply(
        self, reports: dict[bytes, bytes], counted: dict[bytes, bytes], length: Any, groups: Any = None
    ) -> None:
        """Live workers' reports plus the totals: ``delivered`` and ``dead_lettered`` are counted at ack
        time (exact), so the totals' own replace the reports' sum when present (workers of older versions
        only report); ``retried``/``failed`` of gone workers were folded into the totals."""
        totals: dict[str, DispatcherFigures] = {}
        for field, value in reports.items():
            service = field.decode(errors="replace").partition(":")[0]
            try:
                report = _decode_report.decode(value)
            except msgspec.DecodeError:
                continue
            t = totals.setdefault(service, DispatcherFigures())
            t.delivered += report.delivered
            t.failed += report.failed
            t.retried += report.retried
            t.dead_lettered += report.dead_lettered
            t.reports += 1
        for field, value in counted.items():
            service, _, counter = field.decode(errors="replace").rpartition(":")
            if counter in _COUNTED and value.isdigit():
                t = totals.setdefault(service, DispatcherFigures())
                n = int(value)
                if counter in ("delivered", "dead_lettered"):
                    setattr(t, counter, n)
                else:
                    setattr(t, counter, getattr(t, counter) + n)
        self._remote.totals = totals
        self._remote.stream_length = length if isinstance(length, int) else None
        self._remote.backlog = self._backlog(self._remote.stream_length, groups, set(totals))

    def _backlog(
        self, length: int | None, groups: Any, reported: set[str]
    ) -> dict[str, tuple[int | None, int | None]]:
        services = {*self._pipeline.services, *reported}
        if self._bus.kind != "redis-streams":
            return {s: (length, 0) for s in services}
        by_group = {}
        for info in groups if isinstance(groups, list) else ():
            name = info.get("name")
            by_group[name.decode() if isinstance(name, bytes) else name] = info
        backlog: dict[str, tuple[int | None, int | None]] = {}
        group = self._bus.streams.consumer_group
        for service in services:
            info = by_group.get(group_name(group, service))
            if info is None:  # the group does not exist yet: nothing read, nothing known
                continue
            pending = int(info.get("pending") or 0)
            unread = info.get("lag")  # Redis >= 7; None when Redis cannot tell (entries deleted)
            backlog[service] = (pending + unread if isinstance(unread, int) else None, pending)
        return backlog

    async def aclose(self) -> None:
        """Close the Redis client the scrapes opened (if any)."""
        if self._redis is not None:
            redis, self._redis = self._redis, None
            with contextlib.suppress(Exception):
                await redis.aclose()

    async def _loop_lag_ctx(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(self.loop_lag.run(), name="loop-lag")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _redis_ctx(self, app: web.Application) -> AsyncIterator[None]:
        yield
        await self.aclose()


def upstream_ttfb(server_timing: str) -> float | None:
    """Seconds from arrival to upstream headers, from the proxy's ``proxy;dur=A, upstream;dur=B`` (ms).

    SPEC §5 fixes that header on every forwarded answer; reading it back costs ~1µs, where a Flow
    observer would switch body capture on for every request (measured +8µs/request without events).
    """
    if not server_timing.startswith("proxy;dur="):
        return None
    proxy_ms, found, upstream_ms = server_timing[10:].partition(", upstream;dur=")
    if not found:
        return None
    try:
        return (float(proxy_ms) + float(upstream_ms)) / 1000.0
    except ValueError:
        return None


def _task_count() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop (a collect() outside the server)
        return 0
