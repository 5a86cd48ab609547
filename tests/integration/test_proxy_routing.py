"""route_proxy_first: requests only the catch-all can take go straight to the proxy handler, through the
app's own middlewares; every other request goes through aiohttp's router as before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import Handler, Middleware

from llmproxy.server.app import build_app
from llmproxy.server.middleware import request_middleware
from llmproxy.server.routing import add_proxy_route, route_proxy_first
from tests.fakes.upstream import FakeUpstream
from tests.integration.manage.support import AUTH, UPSTREAM_KEY, make_settings


def named(name: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=f"{name} {request.method} {request.path}")

    return handler


def tagging(tag: str) -> Middleware:
    """Adds an ``X-Via: tag`` header on the way out: the headers show the order middlewares ran in."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers.add("X-Via", tag)
        return response

    return middleware


def app_like_ours() -> web.Application:
    """The shapes of build_app's routes: plain paths, dynamic ones, per-area catch-alls, then the proxy."""
    app = web.Application(middlewares=[tagging("outer"), request_middleware, tagging("inner")])
    app.router.add_get("/health", named("health"))
    app.router.add_get("/metrics/prometheus", named("prometheus"))
    app.router.add_route("*", "/manage/projects/{id}", named("project"))
    app.router.add_route("*", "/manage/{tail:.*}", named("manage"))
    app.router.add_get("/admin/static/{name}", named("static"))
    add_proxy_route(app, named("proxy"))
    return app


class Served:
    def __init__(self, client: TestClient, usual_calls: list[str]) -> None:
        self.client = client
        self.usual_calls = usual_calls  # paths that went through aiohttp's router

    async def get(self, path: str, **kwargs: object) -> tuple[int, str, list[str]]:
        async with self.client.request("GET", path, **kwargs) as resp:  # type: ignore[arg-type]
            return resp.status, await resp.text(), resp.headers.getall("X-Via", [])


async def serve(app: web.Application, *, fast: bool) -> tuple[TestClient, list[str]]:
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    runner = client.server.runner
    assert runner is not None and runner.server is not None
    usual_calls: list[str] = []
    usual = runner.server.request_handler

    async def counted(request: web.BaseRequest) -> web.StreamResponse:
        usual_calls.append(request.path)
        return await usual(request)

    runner.server.request_handler = counted
    if fast:
        route_proxy_first(runner)
    return client, usual_calls


@pytest.fixture
async def served() -> AsyncIterator[tuple[Served, Served]]:
    """The same app twice: with the short way to the proxy, and without it (aiohttp alone decides)."""
    fast_client, fast_usual = await serve(app_like_ours(), fast=True)
    plain_client, plain_usual = await serve(app_like_ours(), fast=False)
    try:
        yield Served(fast_client, fast_usual), Served(plain_client, plain_usual)
    finally:
        await fast_client.close()
        await plain_client.close()


ONLY_THE_PROXY = ["/v1/chat/completions", "/v1/models?limit=2", "/manage", "/healthz", "/admin", "/metrics"]
OTHERS = [
    "/health",
    "/metrics/prometheus",
    "/manage/projects/7",
    "/manage/anything/else",
    "/manage/",
    "/admin/static/app.css",
    "/admin/static/",  # a prefix match the router then gives to the proxy
]


@pytest.mark.parametrize("path", ONLY_THE_PROXY)
async def test_a_request_only_the_catch_all_can_take_skips_the_router(
    served: tuple[Served, Served], path: str
) -> None:
    fast, plain = served
    status, body, via = await fast.get(path)
    assert (status, body, via) == await plain.get(path)
    assert body.startswith("proxy GET ")
    assert via == ["inner", "outer"]  # the app's middlewares, in aiohttp's order
    assert fast.usual_calls == []
    assert plain.usual_calls == [path.split("?")[0]]


@pytest.mark.parametrize("path", OTHERS)
async def test_a_request_another_route_might_take_goes_through_the_router(
    served: tuple[Served, Served], path: str
) -> None:
    fast, plain = served
    answer = await fast.get(path)
    assert answer == await plain.get(path)
    assert answer[0] == 200
    assert len(fast.usual_calls) == 1


async def raw_get(port: int, target: bytes) -> bytes:
    """The answer to a request line sent as is (an HTTP client would normalise ``target``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return answer.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize(
    "target",
    [
        b"/%6Danage/projects/7",
        b"/admin/static/%61pp.css",
        b"/%68ealth",
        b"/v1/models%0A",  # a newline: the catch-all's pattern does not match it (404)
        b"http://x",  # absolute form: an empty path, not matched either
    ],
)
async def test_the_decoded_path_decides_as_the_router_does(
    served: tuple[Served, Served], target: bytes
) -> None:
    fast, plain = served
    body = await raw_get(fast.client.server.port, target)
    assert body == await raw_get(plain.client.server.port, target)
    assert not body.startswith(b"proxy")
    assert len(fast.usual_calls) == 1


async def test_expect_goes_through_the_router_which_answers_100_continue(
    served: tuple[Served, Served],
) -> None:
    fast, _ = served
    reader, writer = await asyncio.open_connection("127.0.0.1", fast.client.server.port)
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"{}")
        answer = b""
        while b"proxy POST" not in answer:
            chunk = await asyncio.wait_for(reader.read(4096), 5)
            assert chunk
            answer += chunk
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert fast.usual_calls == ["/v1/chat/completions"]


async def test_errors_of_the_short_way_are_rendered_by_the_app_middleware() -> None:
    async def failing(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    app = web.Application(middlewares=[request_middleware])
    add_proxy_route(app, failing)
    client, usual_calls = await serve(app, fast=True)
    try:
        async with client.get("/v1/models", headers={"X-Request-ID": "req-1"}) as resp:
            assert resp.status == 500
            assert resp.headers["X-Request-ID"] == "req-1"
            body = await resp.json()
        assert body["error"]["type"] == "server_error"
        assert "boom" not in str(body)
        assert usual_calls == []
    finally:
        await client.close()


async def test_nothing_changes_for_apps_the_short_way_does_not_suit() -> None:
    """No add_proxy_route; on_response_prepare signals; a sub-app matched by domain, not path."""

    async def prepared(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Prepared"] = "yes"

    bare = web.Application()
    bare.router.add_route("*", "/{path:.*}", named("proxy"))  # not through add_proxy_route
    signalled = web.Application()
    add_proxy_route(signalled, named("proxy"))
    signalled.on_response_prepare.append(prepared)
    by_domain = web.Application()
    sub = web.Application()
    sub.router.add_get("/v1/models", named("sub"))
    by_domain.add_domain("127.0.0.1", sub)
    add_proxy_route(by_domain, named("proxy"))
    for app in (bare, signalled, by_domain):
        client, usual_calls = await serve(app, fast=True)
        try:
            async with client.get("/v1/models") as resp:
                assert resp.status == 200
            assert usual_calls == ["/v1/models"]
        finally:
            await client.close()


async def test_the_whole_server_sends_proxied_requests_the_short_way(tmp_path: Path) -> None:
    """build_app's routes and middlewares (metrics, request id) with the real ProxyHandler."""
    async with FakeUpstream() as upstream:
        settings = make_settings(tmp_path, UPSTREAM_BASE_URL=upstream.url)
        client, usual_calls = await serve(build_app(settings), fast=True)
        try:
            async with client.post(
                "/manage/projects", json={"name": "p", "api_key": UPSTREAM_KEY}, headers=AUTH
            ) as resp:
                project = await resp.json()
            async with client.post(
                "/manage/tokens", json={"project_id": project["id"]}, headers=AUTH
            ) as resp:
                token = (await resp.json())["token"]
            chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            headers = {"Authorization": f"Bearer {token}", "X-Request-ID": "req-7"}
            async with client.post("/v1/chat/completions", json=chat, headers=headers) as resp:
                assert resp.status == 200
                assert resp.headers["X-Request-ID"] == "req-7"
            async with client.get("/metrics") as resp:
                counted = (await resp.json())["requests"]
        finally:
            await client.close()
    assert usual_calls == ["/manage/projects", "/manage/tokens", "/metrics"]
    assert counted == {"total": 1, "by_path": {"/v1/chat/completions": {"2xx": 1}}}
