"""The upstream HTTP/1.1 client: one keep-alive connection pool per process, responses parsed by llhttp.

Not aiohttp's ClientSession: on the proxy's one request shape (bytes or a body stream out, status,
headers and body chunks back) it costs ~7x the CPU of this client (290 vs 40 µs per request, measured
by scripts/bench.py's references), about a third of the proxy's whole cost per request. Parsing is
httptools (llhttp, the parser of Node.js, kept by uvloop's authors); what is ours is framing the
request, the pool and the timeouts. Nothing is decompressed, no cookie is kept, no redirect followed.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

from yarl import URL

from llmproxy.config import ApiConfig
from llmproxy.config_values import is_decimal
from llmproxy.proxy.answer import UpstreamResponse
from llmproxy.proxy.connection import Origin, UpstreamConnection, UpstreamError

__all__ = ("UpstreamError", "UpstreamPool", "UpstreamResponse")

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_EMPTY_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # say Content-Length: 0 when there is no body


def _origin(base_url: str) -> Origin:
    try:
        url = URL(base_url)
    except ValueError as exc:  # a project URL stored before it was checked ("Port out of range"...)
        raise UpstreamError(f"not a usable upstream URL {base_url!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.raw_host or url.port is None:
        raise UpstreamError(f"not an http(s) upstream URL: {base_url!r}")
    host = url.raw_host
    host_header = f"[{host}]" if ":" in host else host
    if not url.is_default_port():
        host_header += f":{url.port}"
    return Origin((url.scheme, host, url.port), host, url.port, host_header, url.raw_path.rstrip("/"),
                   url.scheme == "https")  # fmt: skip


class UpstreamPool:
    """The ``UpstreamTransport`` the server uses: keep-alive connections per origin, ``ApiConfig`` limits
    and timeouts; closed by a cleanup context of ``build_app``.

    ``timeouts.connect`` bounds each connect, ``response_header`` the wait for the headers and then each
    gap between body chunks, ``request`` the whole exchange; idle connections older than
    ``idle_connection`` are closed rather than reused.
    """

    def __init__(self, api: ApiConfig, *, ssl_context: ssl.SSLContext | None = None) -> None:
        t = api.timeouts
        self._connect_timeout = t.connect
        self._read_timeout = t.response_header
        self._total = t.request
        self._idle_timeout = t.idle_connection
        self._limit = asyncio.Semaphore(api.max_connections) if api.max_connections > 0 else None
        self._per_host = api.max_connections_per_host
        self._slots: dict[tuple[str, str, int], tuple[asyncio.Semaphore, ...]] = {}  # per origin
        self._idle: dict[tuple[str, str, int], list[UpstreamConnection]] = {}
        self._origins: dict[str, Origin] = {}
        self._ssl = ssl_context  # None: the system's CAs, made on the first https request
        self._closed = False

    async def request(
        self,
        method: str,
        base_url: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None = None,
    ) -> UpstreamResponse[UpstreamConnection]:
        """Send ``method base_url+target`` (target: the raw path and query, already encoded) and wait
        for the response headers. A Content-Length in ``headers`` frames a streamed body, which must then
        be exactly that long (else the exchange fails and its connection is closed); without one it is
        sent chunked."""
        if self._closed:
            raise RuntimeError("UpstreamPool is closed")
        origin = self._origins.get(base_url)
        if origin is None:
            origin = self._origins[base_url] = _origin(base_url)
            if len(self._origins) > 1024:  # per-project base URLs: keep the memo bounded
                self._origins = {base_url: origin}
        head, length = self._head(method, origin, target, headers, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._total
        await self._acquire(origin, deadline)
        try:
            return await self._exchange(method, origin, head, body, length, deadline, retry=True)
        except BaseException:
            self._release(origin)
            raise

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    def _head(
        self,
        method: str,
        origin: Origin,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> tuple[bytes, int | None]:
        """The request head, and the Content-Length a streamed body must match (None: sent chunked)."""
        lines = [f"{method} {origin.prefix}{target} HTTP/1.1", f"Host: {origin.host_header}"]
        lines += [f"{name}: {value}" for name, value in headers]
        length: int | None = None
        if isinstance(body, bytes):
            lines.append(f"Content-Length: {len(body)}")
        elif body is None:
            if method in _EMPTY_BODY_METHODS:
                lines.append("Content-Length: 0")
        else:
            declared = [value for name, value in headers if name.lower() == "content-length"]
            if len(declared) > 1 or (declared and not is_decimal(declared[0])):
                raise UpstreamError("a streamed body with an unusable Content-Length: not sent")
            if declared:
                length = int(declared[0])
            else:
                lines.append("Transfer-Encoding: chunked")
        text = "\r\n".join(lines)
        if (
            text.count("\r") != len(lines) - 1 or text.count("\n") != len(lines) - 1
        ):  # a header smuggling a line
            raise UpstreamError("a CR or LF in the request line or a header: not sent")
        return (text + "\r\n\r\n").encode("utf-8", "surrogateescape"), length

    async def _exchange(
        self,
        method: str,
        origin: Origin,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        length: int | None,
        deadline: float,
        *,
        retry: bool,
    ) -> UpstreamResponse[UpstreamConnection]:
        conn = self._reuse(origin)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(origin, deadline)
        response = UpstreamResponse(conn, self._done, self._read_timeout, deadline)
        conn.response = response
        conn.received = False
        try:
            conn.send(method, head, body, length)
            await response.wait_headers()
        except BaseException as exc:
            conn.response = None
            conn.close()
            # a reused connection the upstream had closed: nothing was read, so an idempotent request
            # whose body can be sent again goes once more on a new connection
            replayable = body is None or isinstance(body, bytes)
            unanswered = isinstance(exc, UpstreamError) and reused and not conn.received
            if retry and unanswered and replayable and method in _IDEMPOTENT:
                return await self._exchange(method, origin, head, body, length, deadline, retry=False)
            raise
        return response

    def _reuse(self, origin: Origin) -> UpstreamConnection | None:
        idle = self._idle.get(origin.key)
        if not idle:
            return None
        oldest_allowed = asyncio.get_running_loop().time() - self._idle_timeout
        while idle and idle[0].idle_since < oldest_allowed:  # reuse is newest first: the oldest wait here
            idle.pop(0).close()
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if conn.closed or transport is None or transport.is_closing():  # the upstream closed it
                conn.close()
                continue
            return conn
        return None

    async def _connect(self, origin: Origin, deadline: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        timeout = min(self._connect_timeout, deadline - loop.time())
        tls: ssl.SSLContext | None = None
        if origin.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(origin),
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls else None,
                )
        except TimeoutError:
            raise
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {origin.host_header}: {exc}") from exc
        return conn

    def _done(self, conn: UpstreamConnection, reusable: bool) -> None:
        """An exchange is over: its slot is free, and its connection idle (or closed)."""
        origin = conn.origin
        self._release(origin)
        if not reusable:
            return
        if self._closed:
            conn.close()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(origin.key, []).append(conn)

    async def _acquire(self, origin: Origin, deadline: float) -> None:
        """A slot under ``max_connections`` (and per host). Waiting for one counts as connecting, bounded
        by the connect timeout as aiohttp bounds it; no timer is armed when a slot is free."""
        slots = self._slots.get(origin.key)
        if slots is None:
            per_host = (asyncio.Semaphore(self._per_host),) if self._per_host > 0 else ()
            slots = self._slots[origin.key] = (self._limit,) + per_host if self._limit else per_host
        if not any(slot.locked() for slot in slots):
            await _take(slots)
            return
        timeout = min(self._connect_timeout, deadline - asyncio.get_running_loop().time())
        async with asyncio.timeout(timeout):
            await _take(slots)

    def _release(self, origin: Origin) -> None:
        for slot in self._slots[origin.key]:
            slot.release()


async def _take(slots: tuple[asyncio.Semaphore, ...]) -> None:
    taken: list[asyncio.Semaphore] = []
    try:
        for slot in slots:
            await slot.acquire()
            taken.append(slot)
    except BaseException:
        for slot in taken:
            slot.release()
        raise
