"""build_app(settings): the one place where concrete classes are chosen and wired together.

Each shared resource is owned by a cleanup context: set up in order, torn down in reverse, and
torn down only if it was set up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web

from llmproxy.admin.routes import AdminUI
from llmproxy.audit import Auditor
from llmproxy.auth.authority import Authority
from llmproxy.cache.http_cache import HttpCache, make_cache
from llmproxy.config import Settings
from llmproxy.manage.api import ManageAPI
from llmproxy.metrics import BadRequests
from llmproxy.proxy.handler import ProxyHandler
from llmproxy.proxy.keys import SETTINGS
from llmproxy.server.health import HealthRoutes
from llmproxy.server.middleware import request_middleware
from llmproxy.server.observability import Observability
from llmproxy.server.pipeline import EventPipeline
from llmproxy.server.routing import add_proxy_route
from llmproxy.store.base import Store
from llmproxy.store.factory import make_store

__all__ = ("BAD_REQUESTS", "STORE", "build_app")

log = logging.getLogger(__name__)

STORE: web.AppKey[Store] = web.AppKey("store")
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


def build_app(settings: Settings, *, store: Store | None = None) -> web.Application:
    """The whole server: proxy, management API, health. ``store`` may be injected by tests."""
    store = store or make_store(settings.store)
    authority = Authority(store, settings.auth)
    auditor = Auditor(settings.audit, store)
    pipeline = EventPipeline(settings)
    cache: HttpCache | None = make_cache(settings) if settings.cache.enabled else None
    proxy = ProxyHandler(settings, authority, auditor, cache=cache, observers=pipeline.observers)
    purge = cache.purge if cache is not None else None
    admin = AdminUI(settings, auditor)
    manage = ManageAPI(
        settings, store, authority, auditor, purge_cache=purge, authenticate=admin.authenticate
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

    async def proxy_ctx(app: web.Application) -> AsyncIterator[None]:
        await proxy.start()
        yield
        await proxy.aclose()

    async def cache_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        if cache is not None:
            await cache.aclose()  # after the proxy: its last stores are written, then Redis is closed

    app = web.Application(middlewares=[request_middleware], client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    app[STORE] = store
    app[PIPELINE] = pipeline
    app[BAD_REQUESTS] = bad_requests = BadRequests()
    app.cleanup_ctx.extend(
        [
            store_ctx,
            _owned_task("audit-writer", auditor.run, auditor.flush),
            _owned_task("usage-flusher", authority.run, authority.flush),
            pipeline_ctx,
            cache_ctx,
            proxy_ctx,
        ]
    )
    health = HealthRoutes({"store": store.ping, **pipeline.probes})
    app.add_routes(health.routes())
    if settings.metrics_enabled:
        Observability(settings, pipeline, cache=cache, bad_requests=bad_requests).install(app)
    app.add_routes(manage.routes())
    app.add_routes(admin.routes())
    add_proxy_route(app, proxy.handle)
    return app
