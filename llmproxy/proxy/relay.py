"""Upstream response → client: the status and headers as sent, then each body chunk as it arrives.

The first chunk is awaited before anything is sent, so an upstream failing that early still gets a
JSON 502/504; a failure later can only cut the response short, which the client must be able to see.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import StreamWriter

from llmproxy.errors import Outcome, ProxyError
from llmproxy.proxy.flow import Flow
from llmproxy.proxy.policy import allow_origin
from llmproxy.proxy.transport import UpstreamAnswer
from llmproxy.proxy.upstream import response_headers

__all__ = ("relay",)

log = logging.getLogger(__name__)

# Outcome.X looked up on its class costs ~60 ns on Python 3.11 (the enum's metaclass): a module constant
_OK = Outcome.OK
# The client's send buffer past which the relay waits for it to drain: StreamWriter.write's own limit.
_SEND_HIGH_WATER = 0x10000


async def relay(
    request: web.Request,
    up: UpstreamAnswer,
    flow: Flow,
    own_headers: list[tuple[str, str]],
    origin: str | None,
) -> web.StreamResponse:
    """Answer ``request`` with ``up``, the proxy's ``own_headers`` added (X-Request-ID, Server-Timing,
    cache status) and CORS for an (already allowed) ``origin``; the body passes through ``flow``'s
    captures. Raises ProxyError only while nothing has been sent yet; later failures are the flow's
    outcome."""
    try:
        chunk = await up.readany()
    except (TimeoutError, OSError) as exc:
        flow.outcome = _broken(exc)
        raise ProxyError(flow.outcome.refusal) from None
    flow.status = up.status

    whole = up.is_eof()
    if whole:  # the common small JSON answer: headers and body leave in one write
        resp: web.StreamResponse = web.Response(status=up.status, reason=up.reason, body=chunk)
    else:
        resp = web.StreamResponse(status=up.status, reason=up.reason)
    headers = resp.headers
    headers.extend(response_headers(up.headers))
    headers.extend(own_headers)
    if origin is not None:
        allow_origin(headers, origin)
    try:
        writer = await resp.prepare(request)
        if whole:
            if flow.response_capture is not None or flow.kept is not None:  # (flow.capturing, inlined)
                flow.feed(chunk)
            await resp.write_eof()
        else:
            await _stream(request, resp, writer, up, chunk, flow)
    except ConnectionError:  # the client went away while we were writing to it
        flow.outcome = Outcome.CLIENT_GONE
    return resp


async def _stream(
    request: web.Request,
    resp: web.StreamResponse,
    writer: AbstractStreamWriter | None,
    up: UpstreamAnswer,
    chunk: bytes,
    flow: Flow,
) -> None:
    capturing = flow.capturing
    if capturing:
        flow.feed(chunk)
    await resp.write(chunk)  # aiohttp holds the headers back for the first write: they leave with it
    transport = request.transport
    if transport is not None and isinstance(writer, StreamWriter) and writer.chunked:
        await _pipe(transport, writer, up, flow, capturing)
    else:  # an HTTP/1.0 client, or an answer with its Content-Length: aiohttp frames it
        await _copy(resp, up, flow, capturing)
    if flow.outcome is _OK:
        await resp.write_eof()
        return
    # Headers and part of the body are out: the only honest signal left is an incomplete response
    # (no final chunk, or short of Content-Length), so drop the client's connection.
    transport = request.transport
    if transport is not None:
        transport.close()


async def _pipe(
    transport: asyncio.Transport, writer: StreamWriter, up: UpstreamAnswer, flow: Flow, capturing: bool
) -> None:
    """The rest of a chunked answer written to the client from the upstream connection's callback, as
    each chunk arrives (``UpstreamAnswer.pipe``): this coroutine wakes only at the end, or when the
    client's send buffer is full (then it waits for it to drain, the upstream paused meanwhile)."""

    failed: list[Exception] = []  # raised in send: inside llhttp's callback it would pass for the upstream's

    def send(data: bytes) -> bool:
        if transport.is_closing():  # the client went away: nothing more is sent, or captured as sent
            return False
        try:
            if capturing:
                flow.feed(data)
            framed = b"%x\r\n%b\r\n" % (len(data), data)  # the framing aiohttp's StreamWriter.write adds
            transport.write(framed)
        except Exception as exc:
            failed.append(exc)
            return False
        writer.output_size += len(framed)  # the access log's bytes out (StreamResponse.body_length)
        return transport.get_write_buffer_size() <= _SEND_HIGH_WATER

    while True:
        try:
            more = await up.pipe(send)
        except (TimeoutError, OSError) as exc:
            flow.outcome = _broken(exc)
            return
        if failed:  # our own fault, after the headers: logged, the event says so, the client cut short
            log.error("relaying the answer to %s failed", flow.request_id, exc_info=failed[0])
            flow.outcome = Outcome.INTERNAL
            return
        if transport.is_closing():  # the client went away
            flow.outcome = Outcome.CLIENT_GONE
            return
        if not more:
            return
        await writer.drain()


async def _copy(resp: web.StreamResponse, up: UpstreamAnswer, flow: Flow, capturing: bool) -> None:
    """The rest of the answer, read and written a chunk at a time."""
    while True:
        try:
            chunk = await up.readany()
        except (TimeoutError, OSError) as exc:
            flow.outcome = _broken(exc)
            return
        if not chunk:
            return
        if capturing:
            flow.feed(chunk)
        await resp.write(chunk)


def _broken(exc: TimeoutError | OSError) -> Outcome:
    """The outcome of an upstream answer that stopped with ``exc`` (UpstreamAnswer's errors)."""
    return Outcome.UPSTREAM_TIMEOUT if isinstance(exc, TimeoutError) else Outcome.UPSTREAM_UNAVAILABLE
