"""The catch-all proxy route: policy → token → body → cache → count → forward → relay → observers.

Named steps over ``(request, flow)``: a forwarded request is one ``Flow`` (proxy/flow.py), settled once
and handed to the observers. The hot path: one shared upstream transport, no body re-encoding, response
chunks written to the client as they arrive (``relay``), and capture work only when somebody observes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from time import perf_counter
from typing import TYPE_CHECKING

from aiohttp import web

from llmproxy.config import EventSettings, UpstreamSettings
from llmproxy.errors import Outcome, ProxyError, Refusal
from llmproxy.ids import uuid4_hex
from llmproxy.proxy.bodies import decoded, read_whole, streamed
from llmproxy.proxy.capture import TAIL_BYTES, BodyCapture, bounded
from llmproxy.proxy.flow import Flow, Observer
from llmproxy.proxy.gate import Gate
from llmproxy.proxy.keys import CANCEL_ON_DISCONNECT, REQUEST_ID
from llmproxy.proxy.policy import Policy, allow_origin, split_target
from llmproxy.proxy.ports import ResponseCache
from llmproxy.proxy.relay import relay
from llmproxy.proxy.transport import UpstreamAnswer, UpstreamTransport
from llmproxy.proxy.upstream import request_headers

if TYPE_CHECKING:
    from llmproxy.audit import Auditor
    from llmproxy.auth.authority import Authority, Grant

__all__ = ("ProxyHandler",)

log = logging.getLogger(__name__)

# A body of known size up to this is read whole and sent in one write; larger ones stream through.
_READ_WHOLE_BELOW = 1 << 20
# Outcome.X on its class costs ~60 ns a look-up on Python 3.11 (the enum's metaclass): module constants
_OK, _TOO_LARGE = Outcome.OK, Outcome.BODY_TOO_LARGE


class ProxyHandler:
    """The proxy as one aiohttp handler, sending upstream through ``transport`` (owned by its creator).

    ``observers`` is kept by reference: observers added to that sequence later are called too. ``meter``
    observes only the flows of metered tokens (budgets, TPM), for usage accounting when no observer
    reads every flow.
    """

    def __init__(
        self,
        upstream: UpstreamSettings,
        events: EventSettings,
        authority: Authority,
        auditor: Auditor,
        transport: UpstreamTransport,
        *,
        cache: ResponseCache | None = None,
        observers: Sequence[Observer] = (),
        meter: Observer | None = None,
    ) -> None:
        self._policy = Policy(upstream.api)
        self._gate = Gate(authority, auditor)
        self._cache = cache
        self._observers = observers
        self._meter = meter
        self._base_url = upstream.base_url.rstrip("/")
        self._max_request_capture = events.max_request_body_bytes
        self._max_response_capture = events.max_response_body_bytes
        self._transport = transport

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        arrived = perf_counter()
        started_at = time.time()
        try:
            return await self._handle(request, arrived, started_at)
        except ProxyError as exc:
            origin = request.headers.get("Origin")
            if origin is not None and self._policy.origin_allowed(origin):
                allow_origin(exc.headers, origin)
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
        grant = await self._gate.admit(request)
        watched = True if self._observers else False
        metered = False
        if grant.limits is None:  # a plain token: nothing more to check or to read
            body, plain = await self._read(request, length)
        else:
            body, plain = await self._read(request, length, grant.limits.allowed_models is not None)
            self._gate.allow_model(request, grant, body, plain)
            if grant.limits.metered and not watched and self._meter is not None:
                watched = metered = True  # no observer reads its usage: the meter does
        if self._cache is not None:
            hit = await self._cached(request, grant, plain)
            if hit is not None:
                return hit
        await self._gate.count(request, grant)
        flow = Flow(
            request_id=request.get(REQUEST_ID) or uuid4_hex(),
            method=request.method,
            path=path,
            query=query,
            grant=grant,
            request_headers=headers,
            started_at=started_at,
            arrived=arrived,
            watched=watched,
            metered=metered,
        )
        return await self._forward(request, flow, body, plain)

    # --- before forwarding -----------------------------------------------------------------

    async def _read(
        self, request: web.Request, length: int | None, model: bool = False
    ) -> tuple[bytes | None, bytes]:
        """(the body as received, read whole when something reads it or it is small — None: it streams
        through; its Content-Encoding undone for the whitelist, the cache key and the ``model`` check —
        b"" when unread)."""
        if not request.body_exists:
            return None, b""
        content_type = request.headers.get("Content-Type", "")
        inspect = self._policy.inspects_body(content_type)
        reads = inspect or self._cache is not None or model
        if not reads and (length is None or length > _READ_WHOLE_BELOW):
            return None, b""
        body = await read_whole(request.content, self._policy)
        plain = decoded(body, request.headers, self._policy) if reads else b""
        if inspect:
            self._policy.params(plain, content_type)
        return body, plain

    async def _cached(self, request: web.Request, grant: Grant, plain: bytes) -> web.StreamResponse | None:
        assert self._cache is not None
        hit = await self._cache.lookup(request, grant, plain)
        if hit is not None:
            self._gate.count_cache_hit(grant)
            origin = request.headers.get("Origin")  # CORS is this request's, never the stored one's
            if origin is not None:
                allow_origin(hit.headers, origin)
        return hit

    # --- forwarding ------------------------------------------------------------------------

    async def _forward(
        self, request: web.Request, flow: Flow, body: bytes | None, plain: bytes
    ) -> web.StreamResponse:
        """Forward, relay, settle the flow once, and hand it to the observers."""
        request[CANCEL_ON_DISCONNECT] = True  # a client leaving from now on cancels the upstream exchange
        try:
            if request.transport is None:  # it left while its token was checked: forward nothing
                flow.outcome = Outcome.CLIENT_GONE
                return web.Response(status=flow.outcome.status)
            return await self._exchange(request, flow, self._outgoing(request, flow, body), plain)
        except asyncio.CancelledError:
            flow.outcome = Outcome.CLIENT_GONE
            raise
        finally:
            flow.settle()
            if flow.watched and flow.outcome is not _TOO_LARGE:
                self._notify(flow)

    def _outgoing(
        self, request: web.Request, flow: Flow, body: bytes | None
    ) -> bytes | AsyncIterator[bytes] | None:
        """What goes upstream: the body read whole, or the client's body streamed through (captured for
        the observers either way, up to the bound)."""
        if body is not None:
            if flow.watched:
                flow.request_body, flow.request_body_truncated = bounded(body, self._max_request_capture)
            return body
        if not request.body_exists:
            return None
        if flow.watched:
            flow.request_capture = BodyCapture(self._max_request_capture)
        return streamed(request.content, self._policy, flow)

    async def _exchange(
        self, request: web.Request, flow: Flow, data: bytes | AsyncIterator[bytes] | None, plain: bytes
    ) -> web.StreamResponse:
        """The request upstream, until its answer's headers (a failure is refused by its outcome), then
        the answer relayed (one coroutine for both: a step of its own per await costs ~0.3% a request)."""
        grant = flow.grant
        up_headers = request_headers(request.headers, grant.api_key, flow.request_id)
        if data is not None and not isinstance(data, bytes) and request.content_length is not None:
            up_headers.append(("Content-Length", str(request.content_length)))
        base = grant.upstream_base_url.rstrip("/") if grant.upstream_base_url else self._base_url
        flow.forwarded_ms = (perf_counter() - flow.arrived) * 1000.0
        try:
            up = await self._transport.request(request.method, base, request.raw_path, up_headers, data)
        except (TimeoutError, OSError) as exc:
            if flow.outcome is not _OK:  # the client's body failed first: that is the cause
                raise self._refusal(flow.outcome) from None
            if isinstance(exc, TimeoutError):
                flow.outcome = Outcome.UPSTREAM_TIMEOUT
                raise self._refusal(flow.outcome) from None
            flow.outcome = Outcome.UPSTREAM_UNAVAILABLE
            log.warning("upstream unavailable for %s %s: %r", request.method, flow.path, exc)
            # the class of what failed (ConnectionRefusedError, gaierror, SSLCertVerificationError...)
            # tells the client why, and never carries a URL, a key or a token
            reason = type(exc.__cause__ or exc).__name__
            raise ProxyError(flow.outcome.refusal, f"Upstream unavailable ({reason})") from None
        flow.ttfb_ms = (perf_counter() - flow.arrived) * 1000.0
        flow.upstream = up  # settle() keeps or closes its connection
        if flow.outcome is _TOO_LARGE:  # the upstream answered before the whole body was read
            raise self._refusal(flow.outcome)
        return await self._respond(request, flow, up, plain)

    def _refusal(self, outcome: Outcome) -> ProxyError:
        if outcome is Outcome.BODY_TOO_LARGE:
            return self._policy.too_large()
        if outcome is Outcome.CLIENT_GONE:
            return ProxyError(outcome.refusal, "Request body incomplete")
        return ProxyError(outcome.refusal)

    async def _respond(
        self, request: web.Request, flow: Flow, up: UpstreamAnswer, plain: bytes
    ) -> web.StreamResponse:
        up_headers = up.headers
        flow.stream = up_headers.get("Content-Type", "").startswith("text/event-stream")
        if flow.watched:
            flow.response_headers = up_headers
            flow.response_capture = BodyCapture(self._max_response_capture, tail=TAIL_BYTES)
        upstream_ms = (flow.ttfb_ms or 0.0) - flow.forwarded_ms
        timing = f"proxy;dur={flow.forwarded_ms:.3f}, upstream;dur={upstream_ms:.3f}"
        own_headers = [("X-Request-ID", flow.request_id), ("Server-Timing", timing)]
        window = flow.grant.window
        if window is not None:  # a rate-limited token's x-ratelimit-*, never over the upstream's own
            own_headers.extend(window.headers(up_headers))
        cache = self._cache
        if cache is not None:
            if cache.storable(request, up.status, up_headers):
                flow.kept = BodyCapture(cache.max_object_bytes)
            own_headers.extend(cache.response_headers(request))  # after storable(): it says "stored"
        # policy.headers() already refused an Origin not allowed
        resp = await relay(request, up, flow, own_headers, request.headers.get("Origin"))
        kept = flow.kept
        if cache is not None and kept is not None and flow.outcome is _OK:
            request[CANCEL_ON_DISCONNECT] = False  # the answer is out: a client leaving cuts no store short
            try:
                await cache.store(request, flow.grant, plain, up.status, up_headers, kept.value())
            except Exception:
                log.exception("cache store failed for %s %s", request.method, request.path)
        return resp

    # --- after the response ----------------------------------------------------------------

    def _notify(self, flow: Flow) -> None:
        """The settled flow to every observer; an observer failing is logged, never felt by the client."""
        # a metered flow is watched only when no observer was (handler._handle): the meter reads it
        observers = (self._meter,) if flow.metered and self._meter is not None else self._observers
        for observer in observers:
            try:
                observer(flow)
            except Exception:
                log.exception("observer %r failed for request %s", observer, flow.request_id)
