"""The proxy's catch-all route, and a short way to it past aiohttp's router.

Every request the proxy forwards goes through aiohttp's route resolution, its match-info bookkeeping
and its middleware chain before it reaches ``ProxyHandler``: about a tenth of what the server spends
on a proxied request (counted by ``scripts/bench_instructions.py``: the bare low-level aiohttp server
needs ~50k fewer instructions per request than an Application with a catch-all route and two
middlewares). ``route_proxy_first`` puts a dispatcher in front of the app: a request that no route
but the catch-all can match goes straight to the proxy handler wrapped in the app's own middlewares
(the same ones, in the same order); every other request takes the app's usual way.

"No other route can match" is decided from the router itself, once, after the app is frozen: the
exact paths of its plain routes and the literal prefix (up to the first ``{``) of every other one.
The check is made on the decoded path, which starts with a prefix or equals a path whenever the
form aiohttp matches on (``%2F`` kept encoded) does, so any request another route might take goes
the usual way, where the router decides as before. So do the requests the catch-all itself does not
match (a path that does not start with ``/``, as in ``GET http://host``, or holds a newline) and
requests with ``Expect`` (aiohttp answers ``100-continue`` there).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import PlainResource

__all__ = ("PROXY_ROUTE", "add_proxy_route", "route_proxy_first")

# What aiohttp's low-level server calls per request (a BaseRequest: no match info on the short way).
ServerHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

PROXY_ROUTE: web.AppKey[web.AbstractRoute] = web.AppKey("proxy-route", web.AbstractRoute)


def add_proxy_route(app: web.Application, handler: Handler) -> None:
    """The catch-all route (add it last), recorded so that ``route_proxy_first`` can find it."""
    app[PROXY_ROUTE] = app.router.add_route("*", "/{path:.*}", handler)


def route_proxy_first(runner: web.AppRunner) -> None:
    """After ``runner.setup()``: requests only the catch-all can take skip the router (module doc).
    Does nothing for an app without ``add_proxy_route``, or with ``on_response_prepare`` signals (a
    request that skips the router has no match info, so aiohttp would not send them for it)."""
    app, server = runner.app, runner.server
    proxy = app.get(PROXY_ROUTE)
    if proxy is None or server is None or app.on_response_prepare or not _plain_enough(app, proxy):
        return
    server.request_handler = _dispatcher(app, proxy, server.request_handler)


def _plain_enough(app: web.Application, proxy: web.AbstractRoute) -> bool:
    """Every other route is matched by path (a sub-app by domain is not), and every middleware is
    new-style (an old-style one is a factory, not ``(request, handler)``)."""
    paths = all(r.canonical.startswith("/") for r in app.router.resources() if r is not proxy.resource)
    return paths and all(getattr(m, "__middleware_version__", None) == 1 for m in app.middlewares)


def _dispatcher(app: web.Application, proxy: web.AbstractRoute, usual: ServerHandler) -> ServerHandler:
    exact: set[str] = set()
    prefixes: list[str] = []
    for resource in app.router.resources():
        if resource is proxy.resource:
            continue
        if isinstance(resource, PlainResource):
            exact.add(resource.canonical)
        else:
            prefixes.append(resource.canonical.partition("{")[0])
    own_prefixes = tuple(prefixes)
    own_paths = frozenset(exact)
    direct: ServerHandler = proxy.handler  # type: ignore[assignment]
    for middleware in reversed(app.middlewares):  # as aiohttp chains them: the first one outermost
        direct = partial(middleware, handler=direct)

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if (
            path in own_paths
            or path.startswith(own_prefixes)
            or path[:1] != "/"  # the catch-all's pattern, ^/(.*)$, does not match: aiohttp answers 404
            or "\n" in path
            or request.headers.get(hdrs.EXPECT)
        ):
            return await usual(request)
        return await direct(request)

    return dispatch
