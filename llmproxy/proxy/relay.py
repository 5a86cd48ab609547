"""Upstream response → client: the status and headers as sent, then each body chunk as it arrives.

The first chunk is awaited before anything is sent, so an upstream failing that early still gets a
JSON 502/504; a failure later can only cut the response short, which the client must be able to see.
"""

from __future__ import annotations

from aiohttp import web

from llmproxy.errors import ProxyError, Refusal
from llmproxy.proxy.capture import BodyCapture
from llmproxy.proxy.transport import UpstreamAnswer
from llmproxy.proxy.upstream import response_headers

__all__ = ("Flight", "relay")


class Flight:
    """What one forwarded request has seen so far; the handler turns it into the Exchange."""

    __slots__ = (
        "request_body",
        "request_body_truncated",
        "request_capture",
        "response_capture",
        "kept",
        "response_headers",
        "status",
        "ttfb_ms",
        "stream",
        "error",
        "body_too_large",
        "client_gone",
    )

    def __init__(self) -> None:
        self.request_body = b""
        self.request_body_truncated = False
        self.request_capture: BodyCapture | None = None  # a request body streamed upstream
        self.response_capture: BodyCapture | None = None  # for observers
        self.kept: BodyCapture | None = None  # for the response cache
        self.response_headers: dict[str, str] = {}
        self.status = 0
        self.ttfb_ms: float | None = None
        self.stream = False
        self.error: str | None = None  # None, upstream_timeout, upstream_unavailable, client_disconnected
        self.body_too_large = False  # the streamed request body went past max_body_bytes
        self.client_gone = False  # the client vanished while its body was being read


def _vary_origin(resp: web.StreamResponse) -> None:
    vary = resp.headers.get("Vary")
    if not vary:
        resp.headers["Vary"] = "Origin"
    elif "origin" not in vary.lower():
        resp.headers["Vary"] = vary + ", Origin"


async def relay(
    request: web.Request,
    up: UpstreamAnswer,
    flight: Flight,
    own_headers: list[tuple[str, str]],
    *,
    cors: dict[str, str] | None,
) -> web.StreamResponse:
    """Answer ``request`` with ``up``; ``own_headers`` are the proxy's (X-Request-ID, Server-Timing).

    ``flight.response_capture``/``flight.kept``, when set, receive the body bytes as they pass.
    Raises ProxyError only while nothing has been sent yet.
    """
    try:
        chunk = await up.readany()
    except TimeoutError:
        flight.error = "upstream_timeout"
        raise ProxyError(Refusal.UPSTREAM_TIMEOUT) from None
    except OSError:
        flight.error = "upstream_unavailable"
        raise ProxyError(Refusal.UPSTREAM_UNAVAILABLE) from None
    flight.status = up.status

    whole = up.is_eof()
    if whole:  # the common small JSON answer: headers and body leave in one write
        resp: web.StreamResponse = web.Response(status=up.status, reason=up.reason, body=chunk)
    else:
        resp = web.StreamResponse(status=up.status, reason=up.reason)
    headers = resp.headers
    headers.extend(response_headers(up.headers))
    for name, value in own_headers:
        headers.add(name, value)
    if cors is not None:
        headers.update(cors)
        _vary_origin(resp)
    try:
        await resp.prepare(request)
        if whole:
            _feed(flight, chunk)
            await resp.write_eof()
        else:
            await _stream(request, resp, up, chunk, flight)
    except ConnectionError:  # the client went away while we were writing to it
        flight.error = "client_disconnected"
    return resp


def _feed(flight: Flight, chunk: bytes) -> None:
    if flight.response_capture is not None:
        flight.response_capture.feed(chunk)
    kept = flight.kept
    if kept is not None:
        kept.feed(chunk)
        if kept.truncated:  # past max_object_bytes: never stored, so hold none of it
            flight.kept = None


async def _stream(
    request: web.Request, resp: web.StreamResponse, up: UpstreamAnswer, chunk: bytes, flight: Flight
) -> None:
    capturing = flight.response_capture is not None or flight.kept is not None
    while chunk:
        if capturing:
            _feed(flight, chunk)
        await resp.write(chunk)
        try:
            chunk = await up.readany()
        except TimeoutError:
            flight.error = "upstream_timeout"
            break
        except OSError:
            flight.error = "upstream_unavailable"
            break
    if flight.error is None:
        await resp.write_eof()
        return
    # Headers and part of the body are out: the only honest signal left is an incomplete response
    # (no final chunk, or short of Content-Length), so drop the client's connection.
    transport = request.transport
    if transport is not None:
        transport.close()
