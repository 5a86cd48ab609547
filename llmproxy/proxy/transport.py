"""What the proxy needs from its upstream HTTP client: ``UpstreamTransport`` and ``UpstreamAnswer``.

Two implementations keep the same contract (tests/integration/proxy/test_pool.py runs it on both):
``pool.UpstreamPool``, the one the server uses, and ``SessionTransport`` below, the reference it is
checked against. Errors are part of the contract: ``UpstreamError`` for an upstream that cannot be
reached or breaks the exchange, ``TimeoutError`` for a timeout, nothing else.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from llmproxy.config import ApiConfig
from llmproxy.config_values import is_decimal

__all__ = ("SessionTransport", "UpstreamAnswer", "UpstreamError", "UpstreamTransport")

RequestBody = bytes | AsyncIterator[bytes] | None


class UpstreamError(ConnectionError):
    """The upstream could not be reached, or broke the exchange (closed early, answered garbage)."""


class UpstreamAnswer(Protocol):
    """Status and headers as received; the body read with ``readany`` as it arrives.

    Give the connection back with ``release`` once the body was read to the end, or ``close`` it.
    """

    status: int
    reason: str
    headers: CIMultiDictProxy[str]

    def readany(self) -> Awaitable[bytes]:
        """The body bytes received since the last call; b"" at the end. TimeoutError past the read
        timeout (or the exchange's deadline), UpstreamError if the upstream broke off."""
        ...

    def pipe(self, sink: Callable[[bytes], bool]) -> Awaitable[bool]:
        """Each body chunk handed to ``sink`` as it arrives, until the end (False) or until ``sink``
        returns False, it can take no more now (True: pipe again once it can). Raises as ``readany``;
        the read timeout bounds each gap between chunks."""
        ...

    def is_eof(self) -> bool:
        """The whole body was received and read."""
        ...

    def release(self) -> None:
        """Back to the pool if the whole answer was read and the connection may be kept; else closed."""
        ...

    def close(self) -> None: ...


class UpstreamTransport(Protocol):
    """Sends one request to an upstream and hands back its answer once the headers are in.

    ``ApiConfig.timeouts``: ``connect`` bounds connecting (and waiting for a free connection),
    ``response_header`` the wait for the headers after the request body and each gap between body
    chunks, ``request`` the whole exchange.
    """

    async def request(
        self,
        method: str,
        base_url: str,
        target: str,
        headers: list[tuple[str, str]],
        body: RequestBody = None,
    ) -> UpstreamAnswer:
        """Send ``method base_url+target`` (target: the raw path and query, already encoded). A
        Content-Length in ``headers`` frames a streamed body, which must then be exactly that long
        (else the exchange fails and its connection is closed); without one it is sent chunked.
        Nothing is sent when a header holds a CR or LF."""
        ...

    async def aclose(self) -> None: ...


class SessionTransport:
    """The contract over a plain ``aiohttp.ClientSession``: the reference ``UpstreamPool`` is checked
    against, not used in production (it costs ~7x the pool's CPU per request: README, Architecture).

    Nothing decompressed, no redirect followed, no cookie kept, no header added but Host and framing.
    """

    def __init__(self, api: ApiConfig, *, ssl_context: ssl.SSLContext | None = None) -> None:
        t = api.timeouts
        # aiohttp's `connect` bounds waiting for a free connection and connecting, together
        self._timeout = aiohttp.ClientTimeout(
            total=t.request, connect=t.connect, sock_connect=t.connect, sock_read=t.response_header
        )
        self._api = api
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None  # made on the first request, in the loop
        self._closed = False

    async def request(
        self,
        method: str,
        base_url: str,
        target: str,
        headers: list[tuple[str, str]],
        body: RequestBody = None,
    ) -> SessionAnswer:
        if self._closed:
            raise RuntimeError("SessionTransport is closed")
        if any("\r" in text or "\n" in text for pair in headers for text in pair) or (
            "\r" in method + target or "\n" in method + target
        ):  # aiohttp refuses these only once connected
            raise UpstreamError("a CR or LF in the request line or a header: not sent")
        data: bytes | AsyncIterator[bytes] | None = body
        if body is not None and not isinstance(body, bytes):
            declared = [value for name, value in headers if name.lower() == "content-length"]
            if len(declared) > 1 or (declared and not is_decimal(declared[0])):
                raise UpstreamError("a streamed body with an unusable Content-Length: not sent")
            if declared:  # aiohttp would cut a longer body short and send a shorter one as it is
                data = _exactly(body, int(declared[0]))
        try:
            url = URL(base_url.rstrip("/") + target, encoded=True)
            response = await self._opened().request(
                method, url, headers=headers, data=data, allow_redirects=False
            )
        except TimeoutError as exc:
            raise TimeoutError(str(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(_said(exc)) from exc
        if response.status == 101 or response.status > 599:  # neither can be relayed: as the pool
            response.close()
            what = "switched protocols (101)" if response.status == 101 else "an invalid status"
            raise UpstreamError(f"upstream answered {what} {response.status}: not proxied")
        return SessionAnswer(response)

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _opened(self) -> aiohttp.ClientSession:
        if self._session is None:
            api = self._api
            connector = aiohttp.TCPConnector(
                limit=api.max_connections,  # 0: no limit, in both
                limit_per_host=api.max_connections_per_host,
                keepalive_timeout=api.timeouts.idle_connection,
                ssl=self._ssl,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session


class SessionAnswer:
    """An ``aiohttp.ClientResponse`` as an ``UpstreamAnswer``, its errors mapped to the contract's."""

    __slots__ = ("status", "reason", "headers", "_response")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.status = response.status
        self.reason = response.reason or ""
        self.headers: CIMultiDictProxy[str] = response.headers
        self._response = response

    async def readany(self) -> bytes:
        try:
            return await self._response.content.readany()
        except TimeoutError as exc:
            raise TimeoutError(str(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(_said(exc)) from exc

    async def pipe(self, sink: Callable[[bytes], bool]) -> bool:
        while chunk := await self.readany():
            if not sink(chunk):
                return True
        return False

    def is_eof(self) -> bool:
        return self._response.content.at_eof()

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


def _said(exc: BaseException) -> str:
    """What went wrong, without the request aiohttp's errors carry (its headers hold the upstream key)."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__}: {exc.status} {exc.message}"
    return f"{type(exc).__name__}: {exc}"


async def _exactly(body: AsyncIterator[bytes], length: int) -> AsyncIterator[bytes]:
    """``body``, failing before a byte past ``length`` is sent, or at its end if it fell short (a
    ValueError, not an OSError: aiohttp keeps its message in the error it raises instead)."""
    left = length
    async for chunk in body:
        left -= len(chunk)
        if left < 0:
            raise ValueError("request body longer than its Content-Length: not sent")
        yield chunk
    if left:
        raise ValueError("request body shorter than its Content-Length")
