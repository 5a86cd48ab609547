"""What server/edge.py takes from aiohttp beyond its public API, checked so that an upgrade fails here."""

from __future__ import annotations

import asyncio
import inspect

from aiohttp import web


async def test_the_aiohttp_internals_the_edge_builds_on_are_still_there() -> None:
    """server/edge.py subclasses aiohttp's RequestHandler and Server and reads their state (aiohttp is
    pinned below 3.15). If this fails after an upgrade, re-read web_protocol.py before lifting the pin."""
    from aiohttp.web_protocol import RequestHandler

    state = set(RequestHandler.__slots__) | set(RequestHandler.__mro__[1].__slots__)
    used = {
        "_loop",
        "_request_count",
        "_messages",
        "_request_in_progress",
        "_current_request",
        "_task_handler",
        "_logging_enabled",
    }
    assert used <= state, used - state
    for method in (
        "data_received",
        "connection_made",
        "connection_lost",
        "handle_error",
        "close",
        "force_close",
    ):
        assert callable(getattr(RequestHandler, method))
    # the access log's start time of a request (EdgeProtocol._handle_request) and its hook
    handle = inspect.signature(RequestHandler._handle_request)
    assert list(handle.parameters) == ["self", "request", "start_time", "request_handler"]
    assert callable(RequestHandler.log_access) and "access_logger" in state

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    server = web.Server(handler, keepalive_timeout=1.0)
    assert server._kwargs == {"keepalive_timeout": 1.0} and server._loop is asyncio.get_running_loop()
