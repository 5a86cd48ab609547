"""The server's client edge: aiohttp's connection protocol plus client timeouts, quiet refusals of
malformed HTTP, and proxy exchanges cancelled when their client disconnects.

aiohttp 3.14 has no header, body or send timeout, logs every malformed request at ERROR with a
traceback, and either lets a handler whose client left run on or cancels every such handler
(``handler_cancellation``, which would cut /manage database writes short). ``EdgeProtocol`` is its
``RequestHandler`` with those three changed; it reads some of that class's state, so aiohttp is pinned
below 3.15 and tests/integration/edge checks the state is still there.

Read timeouts cost at most one timer per connection, armed lazily: a request whose head (and body)
arrive in one read, the common case on a keep-alive connection, arms none and reads the clock not once.
The send timeout is a second timer, armed only while bytes wait for a client whose socket buffer is
full (never, for a client that reads what it asked for).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadStatusLine,
    HttpProcessingError,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from llmproxy.config import ServerSettings
from llmproxy.context import ERROR_CODE
from llmproxy.errors import ClientBodyTimeout, Refusal, error_body
from llmproxy.metrics import BadRequests
from llmproxy.proxy.keys import CANCEL_ON_DISCONNECT
from llmproxy.server.routing import ServerHandler

__all__ = ("EdgeProtocol", "EdgeRunner", "bad_request_reason")

log = logging.getLogger(__name__)

# What a connection is waiting for: nothing, its first request, the rest of a head, body bytes.
_IDLE, _FIRST, _HEAD, _BODY = range(4)
_CLIENT_CLOSED = 499  # nginx's "client closed request": an answer nobody is left to receive
_LOOKS = 4  # the send watch's looks per CLIENT_SEND_TIMEOUT while bytes wait: a cut comes up to 1/4 late
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection
_SEND_TIMEOUT = "send_timeout"  # the bad_requests reason and the access log error of a client cut off
_MESSAGES = {
    "bad_request_line": "Malformed request line",
    "bad_header": "Malformed header",
    "bad_framing": "Malformed Content-Length or Transfer-Encoding",
    "too_large": "Request line or headers too large",
    "malformed": "Malformed request",
}


def bad_request_reason(exc: HttpProcessingError) -> str:
    """The label of a parse error (one of ``metrics.BAD_REQUEST_REASONS``), from its type or message."""
    if isinstance(exc, LineTooLong):
        return "too_large"
    if isinstance(exc, BadStatusLine | InvalidURLError):  # BadHttpMethod is a BadStatusLine
        return "bad_request_line"
    text = exc.message.lower() if isinstance(exc.message, str) else ""
    if "too many headers" in text:
        return "too_large"
    if "content-length" in text or "transfer-encoding" in text or "chunk" in text:
        return "bad_framing"
    return "bad_header" if "header" in text else "malformed"


class EdgeProtocol(RequestHandler):
    """One client connection (see the module docstring). Its watchdog is one timer, re-armed only when it
    fires early; body progress just moves ``_since``."""

    __slots__ = (
        "_header_timeout",
        "_body_timeout",
        "_send_timeout",
        "_bad_requests",
        "_phase",
        "_since",
        "_body",
        "_watchdog",
        "_started",
        "_out",
        "_stalled",
        "_waiting",
        "_send_watch",
        "_cut",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        header_timeout: float,
        body_timeout: float,
        send_timeout: float,
        bad_requests: BadRequests,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout
        self._send_timeout = send_timeout
        self._bad_requests = bad_requests
        self._phase = _FIRST
        self._since = 0.0  # when the head began, or when the body last made progress
        self._body: StreamReader | None = None  # the body being received (phase _BODY)
        self._watchdog: asyncio.TimerHandle | None = None
        self._started: float | None = None  # aiohttp's start time of the request in progress (access log)
        # sending: the transport (aiohttp's force_close forgets it while bytes may still wait), since when
        # the client took none of the bytes waiting for it, how many waited at the send watch's last look,
        # its timer, and whether it cut the client off
        self._out: asyncio.Transport | None = None
        self._stalled = 0.0
        self._waiting = 0
        self._send_watch: asyncio.TimerHandle | None = None
        self._cut = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._since = self._loop.time()  # the first head is timed from the connection's start
        self._watch(self._since + self._header_timeout)
        out = self._out = self.transport  # aiohttp's, typed asyncio.Transport (uvloop's is no subclass)
        assert out is not None
        # pause_writing as soon as a byte waits (the kernel's buffer for this client is full), so the send
        # watch sees every wait, the one after the answer too; resume_writing once the client took all
        out.set_write_buffer_limits(high=0)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == _BODY:
            self._since = self._loop.time()
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:  # a head was parsed (or refused as malformed)
            body = self._body
            if phase == _BODY and body is not None and not body.is_eof():  # refused mid-body
                # aiohttp queues the refusal but leaves this body waiting forever: fail it, and end it so
                # that nothing reads it after its handler (the refusal's 400 follows, then the close)
                body.set_exception(BadHttpMessage("Malformed request body framing"))
                body.feed_eof()
            payload = self._messages[-1][1]
            if payload.is_eof():
                self._phase = _IDLE
            else:
                self._phase, self._body, self._since = _BODY, payload, self._loop.time()
                self._watch(self._since + self._body_timeout)
        elif phase == _BODY:
            if self._body is None or self._body.is_eof():  # done; a next head's first bytes wait a read
                self._phase, self._body = _IDLE, None
        elif phase != _HEAD and data:  # a head begun and not finished: time it from its first byte
            # (aiohttp feeds b"" itself to parse what it buffered while paused: no byte of a new head)
            self._phase = _HEAD
            if phase == _IDLE:
                self._since = self._loop.time()
            self._watch(self._since + self._header_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        request, handler = self._current_request, self._task_handler
        super().connection_lost(exc)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._send_watch is not None:
            self._send_watch.cancel()
            self._send_watch = None
        self._out = None
        self._phase, self._body = _IDLE, None
        # Only where the handler asked for it (the proxy, while it waits on the upstream): other handlers
        # write to the database and must finish (aiohttp's handler_cancellation would cancel them all).
        if request is not None and handler is not None and request.get(CANCEL_ON_DISCONNECT):
            handler.cancel()
            # aiohttp logs no access for a cancelled handler: this line is the request's only trace
            self.log_access(request, web.Response(status=_CLIENT_CLOSED), self._started)

    def _handle_request(self, request: web.BaseRequest, start_time: float | None, handler: Any) -> Any:
        """aiohttp's, remembering when the request began (a plain call: no coroutine frame added)."""
        self._started = start_time
        return super()._handle_request(request, start_time, handler)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Malformed HTTP is the client's doing: counted, one DEBUG line, a JSON 400. So is a client gone
        before a handler could answer (aiohttp's "100 Continue" runs outside our middleware): one DEBUG
        line. Else aiohttp's way."""
        if isinstance(exc, ConnectionError) and (self.transport is None or self.transport.is_closing()):
            log.debug("client hung up on %s %s before its answer", request.method, request.path)
            response = web.Response(status=_CLIENT_CLOSED)
            response.force_close()
            return response
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        reason = bad_request_reason(exc)
        self._bad_requests.count(reason)
        log.debug("malformed request from %s refused: %s", request.remote, reason)
        body = error_body(Refusal.BAD_REQUEST, _MESSAGES[reason])
        request[ERROR_CODE] = Refusal.BAD_REQUEST.code  # for the access log
        response = web.Response(status=status, body=body, content_type="application/json")
        response.force_close()
        return response

    # --- the watchdog ---
    def _watch(self, due: float) -> None:
        """Have the watchdog look at ``due`` at the latest."""
        watchdog = self._watchdog
        if watchdog is not None:
            if watchdog.when() <= due:
                return
            watchdog.cancel()
        self._watchdog = self._loop.call_at(due, self._look)

    def _look(self) -> None:
        self._watchdog = None
        phase, transport = self._phase, self.transport
        if phase == _IDLE or transport is None:
            return
        now = self._loop.time()
        if not transport.is_reading():  # the server holds the client back (a slow reader): no stall
            self._since = now
        due = self._since + (self._body_timeout if phase == _BODY else self._header_timeout)
        if now < due:
            self._watchdog = self._loop.call_at(due, self._look)
            return
        self._phase = _IDLE
        if phase == _FIRST:  # a connection that never sent a byte: closed, but it sent nothing bad
            self.force_close()
            return
        self._bad_requests.count("timeout")
        if phase == _BODY and self._body is not None:
            log.debug("request body from %s stalled: 408", self.peername)
            body, self._body = self._body, None
            body.set_exception(ClientBodyTimeout())  # its reader answers 408; the connection then closes
        else:
            log.debug("request head from %s not complete in time: connection closed", self.peername)
            if self._request_in_progress:
                self.close()  # after the answer in progress
            else:
                self.force_close()

    # --- the send watch ---
    # Bytes wait (pause_writing) while the client's kernel buffer is full; all of them have gone when
    # resume_writing runs. While they wait, the watch looks a few times per CLIENT_SEND_TIMEOUT whether
    # fewer wait than at its last look: the client took some. Bytes added meanwhile (at most the relay's
    # 64 KiB, or a write until aiohttp drains) can hide that for a look, never for long: the writers then
    # wait for the drain.
    def pause_writing(self) -> None:
        super().pause_writing()
        self._stalled = now = self._loop.time()
        out = self._out
        self._waiting = out.get_write_buffer_size() if out is not None else 0
        if self._send_watch is None:
            self._send_watch = self._loop.call_at(now + self._send_timeout / _LOOKS, self._look_send)

    def _look_send(self) -> None:
        """Lazy: a wait that ended leaves the timer running; it stops here, or looks again later."""
        self._send_watch = None
        out = self._out
        if out is None or not self._paused:
            return
        now, waiting = self._loop.time(), out.get_write_buffer_size()
        if waiting < self._waiting:
            self._stalled = now
        self._waiting = waiting
        due = self._stalled + self._send_timeout
        if due > now:
            self._send_watch = self._loop.call_at(
                min(due, now + self._send_timeout / _LOOKS), self._look_send
            )
            return
        self._cut = True
        self._bad_requests.count(_SEND_TIMEOUT)
        log.debug("client %s took none of its answer in time: connection reset", self.peername)
        sock = out.get_extra_info("socket")
        if sock is not None:  # a reset: the kernel frees the bytes it holds for the client at once
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            except OSError:
                pass
        out.abort()  # connection_lost: a proxy exchange is cancelled, its upstream connection closed

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse, time: float | None) -> None:
        """aiohttp's, the access line of an answer cut off by the send watch saying so."""
        if self._cut:
            request[ERROR_CODE] = _SEND_TIMEOUT
        _log_access(self, request, response, time)  # (no super(): its lookup is most of this call's cost)


_log_access = RequestHandler.log_access


class EdgeServer(web.Server):
    """aiohttp's low-level server, making ``EdgeProtocol`` connections."""

    def __init__(self, handler: ServerHandler, *, edge: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._edge = edge

    def __call__(self) -> RequestHandler:
        return EdgeProtocol(self, loop=self._loop, **self._edge, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """An AppRunner serving with ``EdgeProtocol``: the client timeouts of ``settings``, bad requests
    counted in ``bad_requests``."""

    def __init__(
        self, app: web.Application, settings: ServerSettings, bad_requests: BadRequests, **kwargs: Any
    ) -> None:
        super().__init__(app, keepalive_timeout=settings.client_keepalive_timeout, **kwargs)
        self._edge = {
            "header_timeout": settings.client_header_timeout,
            "body_timeout": settings.client_body_timeout,
            "send_timeout": settings.client_send_timeout,
            "bad_requests": bad_requests,
        }

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # the app started and frozen, and its Server
        return EdgeServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            edge=self._edge,
            **made._kwargs,
        )
