"""The one server middleware: a request id on every request, and every error as OpenAI-style JSON."""

from __future__ import annotations

import logging
import re

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from llmproxy.context import CALLER, ERROR_CODE
from llmproxy.errors import FINAL_REFUSALS, ClientBodyTimeout, ProxyError, Refusal, error_body
from llmproxy.ids import uuid4_hex
from llmproxy.proxy.keys import REQUEST_ID

__all__ = ("request_middleware",)

log = logging.getLogger(__name__)

_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_JSON = "application/json"
_CLIENT_CLOSED = 499  # nginx's "client closed request": an answer nobody is left to receive

# aiohttp's own HTTP errors (routing 404/405, 413 from client_max_size, …) → our refusal table
_HTTP_REFUSALS = {
    404: Refusal.NOT_FOUND,
    405: Refusal.HTTP_METHOD_NOT_ALLOWED,
    413: Refusal.BODY_TOO_LARGE,
}


def _request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-ID")
    if given and _SANE_ID.match(given):
        return given
    return uuid4_hex()


def _error_response(request: web.Request, exc: ProxyError, request_id: str) -> web.Response:
    request[ERROR_CODE] = exc.refusal.code  # read by the access log and the refusal counter
    if CALLER not in request:  # refused before a grant: the error names whose token it was, if known
        request[CALLER] = exc
    headers = {"X-Request-ID": request_id, **exc.headers}
    if exc.refusal in FINAL_REFUSALS:
        headers["x-should-retry"] = "false"
    return web.Response(status=exc.refusal.status, body=exc.body(), content_type=_JSON, headers=headers)


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = _request_id(request)
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except ProxyError as exc:
        return _error_response(request, exc, request_id)
    except web.HTTPException as exc:
        refusal = _HTTP_REFUSALS.get(exc.status)
        if refusal is None or exc.status < 400:
            raise
        headers = {"X-Request-ID": request_id}
        if exc.status == 405 and "Allow" in exc.headers:
            headers["Allow"] = exc.headers["Allow"]
        body = error_body(refusal, exc.reason if exc.status != 404 else "Not found")
        request[ERROR_CODE] = refusal.code
        return web.Response(status=exc.status, body=body, content_type=_JSON, headers=headers)
    except ClientBodyTimeout:
        return _error_response(request, ProxyError(Refusal.REQUEST_TIMEOUT), request_id)
    except HttpProcessingError:  # the body's framing broke (server/edge.py)
        return _error_response(request, ProxyError(Refusal.BAD_REQUEST, "Malformed request body"), request_id)
    except Exception as exc:
        if isinstance(exc, ConnectionError) and request.transport is None:  # e.g. gone mid-body: no error
            log.debug("client hung up on %s %s (request_id=%s)", request.method, request.path, request_id)
            return web.Response(status=_CLIENT_CLOSED)
        log.exception("unhandled error on %s %s (request_id=%s)", request.method, request.path, request_id)
        return _error_response(request, ProxyError(Refusal.INTERNAL), request_id)
    if not response.prepared:
        response.headers.setdefault("X-Request-ID", request_id)
    return response
