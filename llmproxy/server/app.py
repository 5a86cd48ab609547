"""build_app(settings): the one place where concrete classes are chosen and wired together, each handed
its own frozen section of the settings (config.py's, or config_sections.py's), never the whole.

Each shared resource is owned by a cleanup context: set up in order, torn down in reverse, and
torn down only if it was set up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web, web_response

from llmproxy.admin.routes import AdminUI
from llmproxy.admin.sessions import SessionStore
from llmproxy.audit import Auditor
from llmproxy.auth.authority import Authority
from llmproxy.auth.invalidation import Invalidations
from llmproxy.auth.ledger import Ledger
from llmproxy.auth.shared_ratelimit import SharedRateLimiter
from llmproxy.auth.throttle import SharedAuthThrottle
from llmproxy.cache.http_cache import HttpCache, make_cache
from llmproxy.config import Settings
from llmproxy.config_sections import (
    AdminSettings,
    ObservabilitySettings,
    PipelineSettings,
    shares_rate_limit,
    uses_redis,
)
from llmproxy.events.factory import make_bus
from llmproxy.events.memory import InMemoryBus
from llmproxy.manage.api import ManageAPI
from llmproxy.metrics import BadRequests
from llmproxy.openai.prices import PriceTable
from llmproxy.proxy.flow import Account
from llmproxy.proxy.handler import ProxyHandler
from llmproxy.proxy.instrument import Instrumentation
from llmproxy.proxy.metering import Metering, ledger_account
from llmproxy.proxy.pool import UpstreamPool
from llmproxy.server.access_log import ACCESS_LOG, AccessLog
from llmproxy.server.health import HealthRoutes, Probe
from llmproxy.server.middleware import request_middleware
from llmproxy.server.observability import Observability
from llmproxy.server.pipeline import EventPipeline
from llmproxy.server.routing import add_proxy_route
from llmproxy.server.supervisor import Supervisor
from llmproxy.store.base import Store
from llmproxy.store.factory import make_store

__all__ = ("AUTHORITY", "BAD_REQUESTS", "STORE", "build_app")

log = logging.getLogger(__name__)

SERVER_HEADER = "llmproxy"  # no versions: they only help someone looking for a known hole

STORE: web.AppKey[Store] = web.AppKey("store")
AUTHORITY: web.AppKey[Authority] = web.AppKey("authority", Authority)  # its flush(), for tests and tools
PIPELINE: web.AppKey[EventPipeline] = web.AppKey("pipeline", EventPipeline)
BAD_REQUESTS: web.AppKey[BadRequests] = web.AppKey("bad-requests", BadRequests)  # counted by the runner


def _owned_task(
    name: str, run: Callable[[], Coroutine[Any, Any, None]], on_stop: Callable[[], Coroutine[Any, Any, None]]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context running ``run()`` as a task for the app's lifetime, then ``on_stop()``."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(run(), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await on_stop()

    return ctx


def name_the_server() -> None:
    """``Server: llmproxy`` on every answer that has none (a proxied answer keeps the upstream's own).

    aiohttp adds ``Server: Python/3.x aiohttp/3.x`` with ``headers.setdefault`` from the module global
    ``web_response.SERVER_SOFTWARE`` when it prepares a response: replacing that string costs requests
    nothing, where a header set per response would. An aiohttp internal, hence the upper bound on aiohttp
    in pyproject.toml; tests/integration/test_server_front.py fails loudly if it stops working.
    """
    if not hasattr(web_response, "SERVER_SOFTWARE"):
        log.warning("aiohttp has no web_response.SERVER_SOFTWARE: answers will name aiohttp's version")
    web_response.SERVER_SOFTWARE = SERVER_HEADER  # type: ignore[attr-defined]


def make_pipeline(settings: PipelineSettings, *, account: Account | None = None) -> EventPipeline:
    """The bus, the instrumentation publishing to it and, for a Redis bus with services, the supervisor
    of the dispatcher worker processes. Usage ``account``ing rides on the events when they are built;
    with none built (in-memory bus, no service), a meter reads the usage of metered tokens only."""
    bus = make_bus(settings.worker.bus)
    dispatch = settings.worker.dispatch
    supervisor = None
    if not isinstance(bus, InMemoryBus) and dispatch.services:
        supervisor = Supervisor(settings.worker, dispatch.services, dispatch.workers)
    publishing = not isinstance(bus, InMemoryBus) or bool(dispatch.services)
    instrumentation = Instrumentation(bus, settings.events, account=account if publishing else None)
    meter = Metering(account, settings.events) if account is not None and not publishing else None
    return EventPipeline(settings, bus, instrumentation, supervisor, meter)


def build_app(settings: Settings, *, store: Store | None = None) -> web.Application:
    """The whole server: proxy, management API, health. ``store`` may be injected by tests."""
    name_the_server()
    store = store or make_store(settings.store)
    prefix = settings.auth.redis_prefix
    shared_limiter = SharedRateLimiter(settings.redis, prefix=prefix) if shares_rate_limit(settings) else None
    shared_caches = uses_redis(settings) or shared_limiter is not None  # tell the others what changed
    invalidations = Invalidations(settings.redis, prefix=prefix) if shared_caches else None
    prices = PriceTable(settings.usage.prices)
    ledger = Ledger(prices, retention_days=settings.usage.retention_days)
    authority = Authority(
        store, settings.auth, shared_limiter=shared_limiter, invalidations=invalidations, ledger=ledger
    )
    auditor = Auditor(settings.audit, store)
    pipeline = make_pipeline(PipelineSettings.of(settings), account=ledger_account(ledger.record))
    cache: HttpCache | None = make_cache(settings.cache, settings.redis) if settings.cache.enabled else None
    transport = UpstreamPool(settings.upstream.api)  # connects on demand: nothing opened before startup
    proxy = ProxyHandler(
        settings.upstream,
        settings.events,
        authority,
        auditor,
        transport,
        cache=cache,
        observers=pipeline.observers,
        meter=pipeline.meter,
    )
    purge = cache.purge if cache is not None else None
    # one count of wrong management tokens, at the sign-in form or the API, on every instance of the store
    throttle = SharedAuthThrottle(store)
    admin = AdminUI(
        AdminSettings.of(settings),
        auditor,
        sessions=SessionStore(store),
        throttle=throttle,
        store=store,
        prices=prices,
    )
    manage = ManageAPI(
        settings.server,
        store,
        authority,
        auditor,
        purge_cache=purge,
        authenticate=admin.authenticate,
        throttle=throttle,
    )

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        await store.open()
        if settings.store.encryption_key is None:
            log.warning("ENCRYPTION_KEY is not set: upstream API keys are stored in plain text")
        yield
        await store.close()

    async def pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
        await pipeline.start()
        yield
        await pipeline.aclose()

    async def transport_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await transport.aclose()  # the server has drained its in-flight requests by now

    async def cache_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        if cache is not None:
            await cache.aclose()  # after the proxy: its last stores are written, then Redis is closed

    access_log = AccessLog(settings.log.access, cache_enabled=settings.cache.enabled)

    async def access_log_ctx(app: web.Application) -> AsyncIterator[None]:
        access_log.open()
        task = asyncio.get_running_loop().create_task(access_log.run(), name="access-log-writer")
        yield  # torn down last: every request, drained ones included, has its line by then
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await access_log.aclose()

    app = web.Application(middlewares=[request_middleware], client_max_size=1024 * 1024)
    app[STORE] = store
    app[AUTHORITY] = authority
    app[PIPELINE] = pipeline
    probes: dict[str, Probe] = {"store": store.ping, **pipeline.probes}
    cluster = []  # what makes instances behave as one: a shared rate limit, invalidations for all
    if shared_limiter is not None:
        cluster.append(_owned_task("rate-limit-recovery", shared_limiter.run, shared_limiter.aclose))
        probes["ratelimit"] = shared_limiter.state
    if invalidations is not None:
        listen = functools.partial(invalidations.listen, authority)
        cluster.append(_owned_task("invalidation-listener", listen, invalidations.aclose))
        probes["invalidations"] = invalidations.state
    app[BAD_REQUESTS] = bad_requests = BadRequests()
    if settings.log.access != "off":
        app[ACCESS_LOG] = access_log  # make_runner hands it to aiohttp's access-log hook
        app.cleanup_ctx.append(access_log_ctx)
    app.cleanup_ctx.extend(
        [
            store_ctx,
            _owned_task("audit-writer", auditor.run, auditor.flush),
            _owned_task("usage-flusher", authority.run, authority.flush),
            *cluster,
            pipeline_ctx,
            cache_ctx,
            transport_ctx,
        ]
    )
    health = HealthRoutes(probes)
    app.add_routes(health.routes())
    if settings.metrics_enabled:
        observability = ObservabilitySettings.of(settings)
        Observability(
            observability, pipeline, cache=cache, bad_requests=bad_requests, unpriced=ledger.unpriced
        ).install(app)
    app.add_routes(manage.routes())
    app.add_routes(admin.routes())
    add_proxy_route(app, proxy.handle)
    return app
