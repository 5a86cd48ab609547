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
        "_paused",  # the send watch: bytes wait for the client (BaseProtocol's flow control)
    }
    assert used <= state, used - state
    for method in (
        "data_received",
        "connection_made",
        "connection_lost",
        "handle_error",
        "close",
        "force_close",
        "pause_writing",
    ):
        assert callable(getattr(RequestHandler, method))
    # the access log's start time of a request (EdgeProtocol._handle_request) and its hook
    handle = inspect.signature(RequestHandler._handle_request)
    assert list(handle.parameters) == ["self", "request", "start_time", "request_handler"]
    assert callable(RequestHandler.log_access) and "access_logger" in state
    # the send watch cuts a client off with abort(): connection_lost(None) must wake a writer waiting for
    # the drain (the relay then sees the transport closing; a proxy handler is cancelled besides)
    from aiohttp.base_protocol import BaseProtocol

    protocol = BaseProtocol(asyncio.get_running_loop())
    protocol.transport = object()  # type: ignore[assignment]
    protocol.pause_writing()
    drained = asyncio.ensure_future(protocol._drain_helper())
    await asyncio.sleep(0)
    protocol.connection_lost(None)
    await asyncio.wait_for(drained, 1.0)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    server = web.Server(handler, keepalive_timeout=1.0)
    assert server._kwargs == {"keepalive_timeout": 1.0} and server._loop is asyncio.get_running_loop()
