"""/health and /live (the process answers), /ready (the store and the event bus answer), and ``/``: where
to go from here (a user opening the server's address finds the admin UI and the API docs, not a 404).

A probe that raises makes /ready 503; one that returns a text (``degraded: …``) is reported as it is,
still ready: the instance serves, with a documented fallback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from llmproxy import __version__

__all__ = ("HealthRoutes",)

Probe = Callable[[], Awaitable[str | None]]

_LIVE = msgspec.json.encode({"status": "ok", "version": __version__})
_HOME = msgspec.json.encode(
    {
        "service": "llm-proxy",
        "version": __version__,
        "admin": "/admin/",
        "openapi": "/manage/openapi.json",
        "health": "/health",
        "docs": "README.md: OpenAI-compatible paths such as /v1/chat/completions take a withering token as Bearer",
    }
)


class HealthRoutes:
    """Liveness never touches a dependency; readiness probes each one with a short timeout."""

    def __init__(self, probes: dict[str, Probe], timeout: float = 2.0) -> None:
        self._probes = probes
        self._timeout = timeout

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.home),
            web.get("/health", self.live),
            web.get("/live", self.live),
            web.get("/ready", self.ready),
        ]

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(body=_LIVE, content_type="application/json")

    async def home(self, request: web.Request) -> web.Response:
        return web.Response(body=_HOME, content_type="application/json")

    async def ready(self, request: web.Request) -> web.Response:
        checks: dict[str, str] = {}
        ok = True
        for name, probe in self._probes.items():
            try:
                detail = await asyncio.wait_for(probe(), self._timeout)
                checks[name] = detail or "ok"
            except Exception as exc:  # a probe failing for any reason means not ready
                checks[name] = f"unavailable: {type(exc).__name__}"
                ok = False
        body = {"status": "ready" if ok else "unavailable", "version": __version__, "checks": checks}
        return web.Response(
            body=msgspec.json.encode(body), status=200 if ok else 503, content_type="application/json"
        )
