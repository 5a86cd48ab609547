"""The catch-all proxy route: policy → token → body → cache → count → forward → relay → observers.

The hot path: one shared upstream pool, no body re-encoding, response chunks written to the client
as they arrive (``relay``), and capture work only when somebody observes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Protocol

from aiohttp import ClientError, StreamReader, web
from multidict import CIMultiDictProxy

from llmproxy.audit import audit_record
from llmproxy.auth.tokens import parse_bearer
from llmproxy.codings import DecodedTooLarge, Undecodable, decode
from llmproxy.config import Settings
from llmproxy.errors import ClientBodyTimeout, ProxyError, Refusal
from llmproxy.ids import uuid4_hex
from llmproxy.proxy.capture import TAIL_BYTES, BodyCapture, Exchange, Observer, bounded
from llmproxy.proxy.keys import CALLER, CANCEL_ON_DISCONNECT, REQUEST_ID
from llmproxy.proxy.policy import Policy, split_target
from llmproxy.proxy.relay import Flight, relay
from llmproxy.proxy.transport import UpstreamAnswer, UpstreamTransport
from llmproxy.proxy.upstream import request_headers

if TYPE_CHECKING:
    from llmproxy.audit import Auditor
    from llmproxy.auth.authority import Authority, Grant

__all__ = ("ProxyHandler", "ResponseCache")

log = logging.getLogger(__name__)

# Refusals of the token check that SPEC §10 wants in the audit log, with their result.
_AUDITED = {Refusal.PROJECT_INACTIVE: "denied", Refusal.SERVICE_UNAVAILABLE: "error"}
# A body of known size up to this is read whole and sent in one write; larger ones stream through.
_READ_WHOLE_BELOW = 1 << 20
# The status an Exchange records when no upstream status was relayed (499: client closed request).
_ERROR_STATUS = {
    "upstream_timeout": 504,
    "upstream_unavailable": 502,
    "client_disconnected": 499,
    "request_timeout": 408,
}


class ResponseCache(Protocol):
    """What the proxy needs from the HTTP response cache (SPEC §8)."""

    max_object_bytes: int

    async def lookup(self, request: web.Request, grant: Grant, body: bytes) -> web.StreamResponse | None: ...

    def storable(self, request: web.Request, status: int, headers: CIMultiDictProxy[str]) -> bool: ...

    def response_headers(self, request: web.Request) -> Iterable[tuple[str, str]]: ...

    async def store(
        self,
        request: web.Request,
        grant: Grant,
        body: bytes,
        status: int,
        headers: CIMultiDictProxy[str],
        response_body: bytes,
    ) -> None: ...


class ProxyHandler:
    """The proxy as one aiohttp handler, sending upstream through ``transport`` (owned by its creator).

    ``observers`` is kept by reference: observers added to that sequence later are called too.
    """

    def __init__(
        self,
        settings: Settings,
        authority: Authority,
        auditor: Auditor,
        transport: UpstreamTransport,
        *,
        cache: ResponseCache | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        self._settings = settings
        self._policy = Policy(settings.upstream.api)
        self._authority = authority
        self._auditor = auditor
        self._cache = cache
        self._observers = observers
        self._base_url = settings.upstream.base_url.rstrip("/")
        self._max_request_capture = settings.events.max_request_body_bytes
        self._max_response_capture = settings.events.max_response_body_bytes
        self._transport = transport

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        arrived = perf_counter()
        started_at = time.time()
        try:
            return await self._handle(request, arrived, started_at)
        except ProxyError as exc:
            origin = request.headers.get("Origin")
            if origin is not None and self._policy.origin_allowed(origin):
                exc.headers.update(self._policy.cors_headers(origin))
            raise

    # Route this (a bound coroutine method): aiohttp wraps a callable object in a deprecated shim.
    handle = __call__

    async def _handle(self, request: web.Request, arrived: float, started_at: float) -> web.StreamResponse:
        policy = self._policy
        headers = request.headers
        raw_path, query = split_target(request.raw_path)
        path = policy.endpoint(raw_path)
        if request.method == "OPTIONS":
            if not policy.origin_allowed(headers.get("Origin")):
                raise ProxyError(Refusal.ORIGIN_NOT_ALLOWED)
            return web.Response(status=204, headers=policy.preflight_headers(headers))
        policy.method(request.method)
        policy.headers(headers)
        length = request.content_length
        policy.body_size(length)

        # Authenticate before reading a body: anonymous callers must not make us buffer anything.
        grant = await self._authorize(request)

        body: bytes | None = None  # as received: what is forwarded
        plain = b""  # its Content-Encoding undone: what the whitelist and the cache key read
        if request.body_exists:
            content_type = headers.get("Content-Type", "")
            inspect = policy.inspects_body(content_type)
            if inspect or self._cache is not None or (length is not None and length <= _READ_WHOLE_BELOW):
                body = await self._read_body(request.content)
                if inspect or self._cache is not None:
                    plain = self._decoded(body, headers)
                if inspect:
                    policy.params(plain, content_type)

        if self._cache is not None:
            hit = await self._cache.lookup(request, grant, plain)
            if hit is not None:
                self._authority.count_cache_hit(grant)
                origin = headers.get("Origin")  # CORS is this request's, never the stored one's
                if origin is not None:
                    hit.headers.update(policy.cors_headers(origin))
                    hit.headers.add("Vary", "Origin")
                return hit
        await self._counted(request, grant)
        return await self._forward(request, grant, body, plain, path, query, arrived, started_at)

    # --- before forwarding -----------------------------------------------------------------

    async def _authorize(self, request: web.Request) -> Grant:
        raw_token = parse_bearer(request.headers.get("Authorization"))
        try:
            request[CALLER] = grant = await self._authority.check(raw_token)  # whose request: access log
            return grant
        except ProxyError as exc:
            self._audit_refusal(request, exc, None)
            raise

    async def _counted(self, request: web.Request, grant: Grant) -> None:
        try:
            await self._authority.count_request(grant)
        except ProxyError as exc:
            self._audit_refusal(request, exc, grant)
            raise

    def _audit_refusal(self, request: web.Request, exc: ProxyError, grant: Grant | None) -> None:
        result = _AUDITED.get(exc.refusal)
        if result is None:
            return
        self._auditor.record(
            audit_record(
                "proxy_request",
                result,
                reason=exc.refusal.code,
                request=request,
                project_id=grant.project_id if grant else exc.project_id,
                token_id=grant.token_id if grant else exc.token_id,
            )
        )

    async def _read_body(self, content: StreamReader) -> bytes:
        """The whole request body, refused with 413 past ``max_body_bytes`` (chunked bodies too)."""
        limit = self._policy.max_body_bytes
        chunks: list[bytes] = []
        total = 0
        try:
            while chunk := await content.readany():
                total += len(chunk)
                if total > limit:
                    raise self._policy.too_large()
                chunks.append(chunk)
        except (ConnectionError, ClientError, asyncio.IncompleteReadError):
            raise ProxyError(Refusal.BAD_REQUEST, "Request body incomplete") from None
        except ClientBodyTimeout:
            raise ProxyError(Refusal.REQUEST_TIMEOUT) from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _decoded(self, body: bytes, headers: CIMultiDictProxy[str]) -> bytes:
        """A copy of ``body`` with its Content-Encoding undone, bounded by ``max_body_bytes``: 413 past
        it (a decompression bomb never inflates further), 400 ``invalid_request_body`` if it does not
        decode."""
        if "Content-Encoding" not in headers:
            return body
        try:
            return decode(body, ", ".join(headers.getall("Content-Encoding")), self._policy.max_body_bytes)
        except DecodedTooLarge:
            raise self._policy.too_large() from None
        except Undecodable as exc:
            raise ProxyError(Refusal.INVALID_REQUEST_BODY, f"Request body does not decode: {exc}") from None

    async def _streamed_body(self, content: StreamReader, flight: Flight) -> AsyncIterator[bytes]:
        """The request body passed on as it arrives, counted against ``max_body_bytes``."""
        limit = self._policy.max_body_bytes
        capture = flight.request_capture
        total = 0
        while True:
            try:
                chunk = await content.readany()
            except ClientBodyTimeout:
                flight.error = "request_timeout"
                raise
            except BaseException:
                flight.client_gone = True
                raise
            if not chunk:
                return
            total += len(chunk)
            if total > limit:
                flight.body_too_large = True
                raise ValueError("request body too large")
            if capture is not None:
                capture.feed(chunk)
            yield chunk

    # --- forwarding ------------------------------------------------------------------------

    async def _forward(
        self,
        request: web.Request,
        grant: Grant,
        body: bytes | None,
        plain: bytes,
        path: str,
        query: str,
        arrived: float,
        started_at: float,
    ) -> web.StreamResponse:
        request_id = request.get(REQUEST_ID) or uuid4_hex()
        observing = bool(self._observers)
        flight = Flight()
        up_headers = request_headers(request.headers, grant.api_key, request_id)
        data: bytes | AsyncIterator[bytes] | None = body
        if body is not None:
            if observing:
                flight.request_body, flight.request_body_truncated = bounded(body, self._max_request_capture)
        elif request.body_exists:
            if observing:
                flight.request_capture = BodyCapture(self._max_request_capture)
            data = self._streamed_body(request.content, flight)
            if request.content_length is not None:
                up_headers.append(("Content-Length", str(request.content_length)))
        base = grant.upstream_base_url.rstrip("/") if grant.upstream_base_url else self._base_url

        forwarded_at = perf_counter()
        up: UpstreamAnswer | None = None
        request[CANCEL_ON_DISCONNECT] = True  # a client leaving from now on cancels the upstream exchange
        try:
            if request.transport is None:  # it left while its token was checked: forward nothing
                flight.error = "client_disconnected"
                return web.Response(status=_ERROR_STATUS["client_disconnected"])
            try:
                up = await self._transport.request(request.method, base, request.raw_path, up_headers, data)
            except TimeoutError:
                flight.error = "upstream_timeout"
                raise ProxyError(Refusal.UPSTREAM_TIMEOUT) from None
            except OSError as exc:
                if flight.body_too_large:
                    raise self._policy.too_large() from None
                if flight.error == "request_timeout":  # the client's body stalled (server/edge.py)
                    raise ProxyError(Refusal.REQUEST_TIMEOUT) from None
                if flight.client_gone:
                    flight.error = "client_disconnected"
                    raise ProxyError(Refusal.BAD_REQUEST, "Request body incomplete") from None
                flight.error = "upstream_unavailable"
                log.warning("upstream unavailable for %s %s: %r", request.method, path, exc)
                raise ProxyError(Refusal.UPSTREAM_UNAVAILABLE) from None
            headers_at = perf_counter()
            flight.ttfb_ms = (headers_at - arrived) * 1000.0
            if flight.body_too_large:  # the upstream answered before the whole body was read
                raise self._policy.too_large()
            timing = (
                f"proxy;dur={(forwarded_at - arrived) * 1000.0:.3f}, "
                f"upstream;dur={(headers_at - forwarded_at) * 1000.0:.3f}"
            )
            return await self._respond(request, grant, plain, up, flight, request_id, timing)
        except asyncio.CancelledError:
            flight.error = "client_disconnected"
            raise
        finally:
            if up is not None:
                if flight.error is None and not flight.body_too_large:
                    up.release()
                else:
                    up.close()
            if flight.status == 0:
                flight.status = _ERROR_STATUS.get(flight.error or "", 500)
                flight.error = flight.error or "internal_error"
            if observing and not flight.body_too_large:
                self._emit(request, grant, request_id, path, query, started_at, arrived, flight)

    async def _respond(
        self,
        request: web.Request,
        grant: Grant,
        plain: bytes,
        up: UpstreamAnswer,
        flight: Flight,
        request_id: str,
        timing: str,
    ) -> web.StreamResponse:
        up_headers = up.headers
        flight.stream = up_headers.get("Content-Type", "").startswith("text/event-stream")
        if self._observers:
            flight.response_headers = dict(up_headers)
            flight.response_capture = BodyCapture(self._max_response_capture, tail=TAIL_BYTES)
        own_headers = [("X-Request-ID", request_id), ("Server-Timing", timing)]
        if grant.window is not None:  # a rate-limited token's x-ratelimit-*, never over the upstream's own
            own_headers.extend(grant.window.headers(up_headers))
        cache = self._cache
        if cache is not None:
            if cache.storable(request, up.status, up_headers):
                flight.kept = BodyCapture(cache.max_object_bytes)
            own_headers.extend(cache.response_headers(request))  # after storable(): it says "stored"
        origin = request.headers.get("Origin")  # policy.headers() already refused one not allowed
        cors = self._policy.cors_headers(origin) if origin is not None else None
        resp = await relay(request, up, flight, own_headers, cors=cors)
        kept = flight.kept
        if cache is not None and kept is not None and flight.error is None:  # relay drops a truncated copy
            request[CANCEL_ON_DISCONNECT] = False  # the answer is out: a client leaving cuts no store short
            try:
                await cache.store(request, grant, plain, up.status, up_headers, kept.value())
            except Exception:
                log.exception("cache store failed for %s %s", request.method, request.path)
        return resp

    # --- after the response ----------------------------------------------------------------

    def _emit(
        self,
        request: web.Request,
        grant: Grant,
        request_id: str,
        path: str,
        query: str,
        started_at: float,
        arrived: float,
        flight: Flight,
    ) -> None:
        """One Exchange to every observer; an observer failing is logged, never felt by the client."""
        if flight.request_capture is not None:
            request_body = flight.request_capture.value()
            request_truncated = flight.request_capture.truncated
        else:
            request_body, request_truncated = flight.request_body, flight.request_body_truncated
        response = flight.response_capture
        exchange = Exchange(
            request_id=request_id,
            token_id=grant.token_id,
            project_id=grant.project_id,
            method=request.method,
            path=path,
            query=query,
            status=flight.status,
            started_at=started_at,
            duration_ms=(perf_counter() - arrived) * 1000.0,
            ttfb_ms=flight.ttfb_ms,
            request_headers=dict(request.headers),
            response_headers=flight.response_headers,
            request_body=request_body,
            request_body_truncated=request_truncated,
            response_body=response.value() if response is not None else b"",
            response_body_truncated=response.truncated if response is not None else False,
            response_tail=response.tail() if response is not None else b"",
            stream=flight.stream,
            error=flight.error,
        )
        for observer in self._observers:
            try:
                observer(exchange)
            except Exception:
                log.exception("observer %r failed for request %s", observer, request_id)
