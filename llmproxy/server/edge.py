"""The server's client edge: aiohttp's connection protocol, with quiet refusals of malformed HTTP.

aiohttp 3.14 logs every malformed request at ERROR with a traceback (556 bytes of log for a 30-byte bad
request) and answers it in plain text. ``EdgeProtocol`` is its ``RequestHandler`` with that changed; it
builds on that class's internals, so aiohttp is pinned below 3.15 and tests/integration/edge checks
them.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, HttpProcessingError, InvalidURLError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from llmproxy.errors import Refusal, error_body
from llmproxy.metrics import BadRequests
from llmproxy.server.routing import ServerHandler

__all__ = ("EdgeProtocol", "EdgeRunner", "bad_request_reason")

log = logging.getLogger(__name__)

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
    """One client connection (see the module docstring)."""

    __slots__ = ("_bad_requests",)

    def __init__(self, manager: web.Server, *, bad_requests: BadRequests, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._bad_requests = bad_requests

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Malformed HTTP is the client's doing: counted, one DEBUG line, a JSON 400. Else aiohttp's way."""
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        reason = bad_request_reason(exc)
        self._bad_requests.count(reason)
        log.debug("malformed request from %s refused: %s", request.remote, reason)
        body = error_body(Refusal.BAD_REQUEST, _MESSAGES[reason])
        response = web.Response(status=status, body=body, content_type="application/json")
        response.force_close()
        return response


class EdgeServer(web.Server):
    """aiohttp's low-level server, making ``EdgeProtocol`` connections."""

    def __init__(self, handler: ServerHandler, *, edge: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._edge = edge

    def __call__(self) -> RequestHandler:
        return EdgeProtocol(self, loop=self._loop, **self._edge, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """An AppRunner serving with ``EdgeProtocol``, bad requests counted in ``bad_requests``."""

    def __init__(self, app: web.Application, bad_requests: BadRequests, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._edge: dict[str, Any] = {"bad_requests": bad_requests}

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
