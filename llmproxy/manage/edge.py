"""The edges of a management request: who may call, what the body and path hold, how answers look.

Kept apart from the handlers so that each handler reads as the change it makes.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from llmproxy.codings import DecodedTooLarge, Undecodable, decode
from llmproxy.errors import ProxyError, Refusal
from llmproxy.manage.schemas import MAX_BODY_BYTES, UUID_PATTERN

__all__ = (
    "Handler",
    "authenticate",
    "is_uuid",
    "json_response",
    "method_not_allowed",
    "no_content",
    "not_found",
    "path_id",
    "read_body",
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_UUID = re.compile(UUID_PATTERN)
# answers carry upstream-key hints and, once, a raw token: no cache may keep them
_NO_STORE = {"Cache-Control": "no-store"}
_encode = msgspec.json.encode


def authenticate(request: web.Request, management_token: bytes) -> None:
    """401 ``unauthorized`` unless ``Authorization: Bearer <management token>``; an empty configured
    token lets nobody in. The comparison always runs, in constant time."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    presented = given.strip().encode("utf-8", "surrogateescape")
    matches = hmac.compare_digest(presented, management_token)
    if not (matches and scheme.lower() == "bearer" and management_token):
        raise ProxyError(Refusal.UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})


def is_uuid(text: str) -> bool:
    return _UUID.fullmatch(text) is not None


def path_id(request: web.Request, what: str) -> str:
    """The ``{id}`` of the path, canonical (lower case); anything but a UUID is simply not found."""
    raw = request.match_info.get("id", "")
    if not is_uuid(raw):
        raise ProxyError(Refusal.NOT_FOUND, f"{what} not found")
    return raw.lower()


async def read_body(request: web.Request) -> bytes:
    """The body with its Content-Encoding undone, refused with 413 past 1 MiB (before or after
    decoding) whatever the application's own limit, 400 ``invalid_request_body`` if it does not decode."""
    too_large = ProxyError(Refusal.BODY_TOO_LARGE, f"Request body is larger than {MAX_BODY_BYTES} bytes")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_large
    if "Content-Encoding" not in request.headers:
        return bytes(body)
    try:  # the server decodes nothing on the way in (see server.run.make_runner): a bounded copy here
        return decode(bytes(body), ", ".join(request.headers.getall("Content-Encoding")), MAX_BODY_BYTES)
    except DecodedTooLarge:
        raise too_large from None
    except Undecodable as exc:
        raise ProxyError(Refusal.INVALID_REQUEST_BODY, f"Request body does not decode: {exc}") from None


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=_encode(value), status=status, content_type="application/json", headers=_NO_STORE
    )


def no_content() -> web.Response:
    return web.Response(status=204, headers=_NO_STORE)


def method_not_allowed(allow: str) -> Handler:
    """A handler answering 405 with ``Allow``: registered last on a path, it catches every other method
    before the proxy's catch-all could."""

    async def refuse(request: web.Request) -> web.StreamResponse:
        raise ProxyError(Refusal.HTTP_METHOD_NOT_ALLOWED, headers={"Allow": allow})

    return refuse


async def not_found(request: web.Request) -> web.StreamResponse:
    raise ProxyError(Refusal.NOT_FOUND, f"No management route {request.path}")
