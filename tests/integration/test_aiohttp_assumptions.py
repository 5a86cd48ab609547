"""What server/routing.py's short way to the proxy assumes of aiohttp, each assumption checked by name.

pyproject.toml pins aiohttp below its next minor version. Before raising the pin, run this file: a
failure names the assumption that broke, where the proxy would otherwise quietly take the slow way
(or a wrong one).
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_urldispatcher import PlainResource

from llmproxy.server.app import build_app
from llmproxy.server.routing import PROXY_ROUTE, add_proxy_route, route_proxy_first
from tests.integration.manage.support import make_settings


def broken(assumption: str) -> str:
    return (
        f"aiohttp {aiohttp.__version__} no longer holds what server/routing.py assumes: {assumption}. "
        "Fix route_proxy_first before raising the aiohttp pin in pyproject.toml."
    )


async def answer(request: web.Request) -> web.Response:
    return web.Response(text=request.path)


async def test_the_low_level_server_calls_its_request_handler_attribute_for_each_request() -> None:
    app = web.Application()
    app.router.add_get("/x", answer)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        runner = client.server.runner
        server = runner.server if runner is not None else None
        assert isinstance(server, web.Server) and callable(getattr(server, "request_handler", None)), broken(
            "after runner.setup(), runner.server is a web.Server with a request_handler attribute"
        )
        usual = server.request_handler
        seen: list[object] = []

        async def recording(request: web.BaseRequest) -> web.StreamResponse:
            seen.append(request)
            return await usual(request)

        server.request_handler = recording
        async with client.get("/x") as resp:
            assert resp.status == 200 and await resp.text() == "/x"
    finally:
        await client.close()
    assert len(seen) == 1, broken("a request_handler set after setup is what each new connection calls")
    assert isinstance(seen[0], web.BaseRequest), broken("request_handler is called with a BaseRequest")


def test_resources_tell_exact_paths_from_prefixes_by_class_and_canonical() -> None:
    app = web.Application()
    plain = app.router.add_get("/health", answer).resource
    dynamic = app.router.add_route("*", "/manage/{tail:.*}", answer).resource
    add_proxy_route(app, answer)
    proxy = app[PROXY_ROUTE]
    assert isinstance(plain, PlainResource) and plain.canonical == "/health", broken(
        "a route without {} is a web_urldispatcher.PlainResource whose canonical is its path"
    )
    assert (
        dynamic is not None
        and not isinstance(dynamic, PlainResource)
        and dynamic.canonical.startswith("/manage/{")
    ), broken("a dynamic route's canonical is its path up to the first { literally")
    assert proxy.resource in list(app.router.resources()) and proxy.handler is answer, broken(
        "router.resources() holds each route's .resource, and route.handler is the handler as added"
    )


def test_the_catch_all_matches_every_path_from_a_slash_but_none_with_a_newline() -> None:
    app = web.Application()
    add_proxy_route(app, answer)
    resource = app[PROXY_ROUTE].resource
    assert resource is not None
    pattern = resource.get_info().get("pattern")
    assert pattern is not None, broken("the catch-all's resource exposes its regex as get_info()['pattern']")
    assert pattern.fullmatch("/v1/chat/completions") and pattern.fullmatch("/"), broken(
        "'/{path:.*}' matches every decoded path that starts with /"
    )
    assert not pattern.fullmatch("v1/models") and not pattern.fullmatch("/v1\nx"), broken(
        "'/{path:.*}' matches no path without a leading / and none holding a newline"
    )


async def test_new_style_middlewares_are_marked_and_chained_first_outermost_by_keyword() -> None:
    calls: list[str] = []

    def tagging(tag: str) -> Middleware:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            calls.append(tag)
            return await handler(request)

        return middleware

    outer, inner = tagging("outer"), tagging("inner")
    assert getattr(outer, "__middleware_version__", None) == 1, broken(
        "@web.middleware marks a middleware with __middleware_version__ = 1"
    )
    app = web.Application(middlewares=[outer, inner])
    app.router.add_get("/x", answer)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        async with client.get("/x") as resp:
            status = resp.status
    finally:
        await client.close()
    assert status == 200, broken("aiohttp passes a middleware its next handler by keyword: handler=")
    assert calls == ["outer", "inner"], broken("aiohttp chains middlewares with the first one outermost")


async def test_route_proxy_first_takes_build_apps_app(tmp_path: Path) -> None:
    runner = web.AppRunner(build_app(make_settings(tmp_path)))
    await runner.setup()
    try:
        assert runner.server is not None
        usual = runner.server.request_handler
        route_proxy_first(runner)
        assert runner.server.request_handler is not usual, broken(
            "build_app's routes are all matched by path and its middlewares all new-style "
            "(route_proxy_first declined the app, so every proxied request takes the router)"
        )
    finally:
        await runner.cleanup()
