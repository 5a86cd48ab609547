"""One upstream HTTP/1.1 connection: the request framed out, the response parsed in by llhttp.

The response reaches its reader as it arrives (``UpstreamResponse.readany``), the socket paused while
more than ``_HIGH_WATER`` bytes wait unread. ``pool`` owns the connections; nothing here is shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from llmproxy.proxy.transport import UpstreamError

__all__ = ("Origin", "UpstreamConnection", "UpstreamError", "UpstreamResponse")

_HIGH_WATER = 256 * 1024  # response bytes buffered before the upstream socket stops being read
_NO_BODY_STATUS = frozenset({204, 304})


class Origin(NamedTuple):
    """Where a connection goes; the pool keeps its connections per ``key``."""

    key: tuple[str, str, int]  # (scheme, host, port): connections are pooled per origin
    host: str  # connect to
    port: int
    host_header: str
    prefix: str  # the base URL's path, before every request target
    tls: bool


class UpstreamResponse:
    """Status and headers as received; the body read with ``readany`` as it arrives.

    Give the connection back with ``release`` once the body was read to the end, or ``close`` it.
    """

    __slots__ = (
        "status",
        "reason",
        "headers",
        "_conn",
        "_done",
        "_chunks",
        "_buffered",
        "_headers_done",
        "_complete",
        "_until_close",
        "_error",
        "_waiter",
        "_body_waiter",
        "_read_timeout",
        "_deadline",
        "_expires",
        "_timer",
        "_timer_at",
        "_loop",
        "_finished",
    )

    def __init__(
        self,
        conn: UpstreamConnection,
        done: Callable[[UpstreamConnection, bool], None],
        read_timeout: float,
        deadline: float,
    ) -> None:
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = _EMPTY_HEADERS
        self._conn = conn
        self._done = done  # (connection, reusable): once, when the exchange is over
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._headers_done = False
        self._complete = False
        self._until_close = False  # no Content-Length, not chunked: the body ends when the connection does
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[Any] | None = None  # the reader's, while it waits
        self._body_waiter = False  # the waiter is readany's (answered with the bytes), not the headers'
        self._read_timeout = read_timeout
        self._deadline = deadline
        self._expires = 0.0  # when the current wait times out
        self._timer: asyncio.TimerHandle | None = None  # one per response, re-armed only when it fires
        self._timer_at = 0.0
        self._loop = asyncio.get_running_loop()
        self._finished = False

    def readany(self) -> asyncio.Future[bytes]:
        """The body bytes received since the last call; b"" at the end. TimeoutError past the read
        timeout (or the exchange's deadline), UpstreamError if the upstream broke off.

        A future rather than a coroutine, and one timer per response rather than one per wait: an open
        stream waiting for its next event holds three small objects (future, its iterator, the task's
        wake-up), which the collector's young generation walks at every pass (docs/performance.md).
        """
        waiter: asyncio.Future[bytes] = self._loop.create_future()
        if self._chunks or self._complete or self._error is not None:
            self._answer(waiter)
        elif self._arm(reading=True):
            self._waiter, self._body_waiter = waiter, True
        else:
            waiter.set_exception(TimeoutError())
        return waiter

    def _answer(self, waiter: asyncio.Future[bytes]) -> None:
        chunks = self._chunks
        if chunks:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            if self._buffered >= _HIGH_WATER:
                self._conn.resume_reading()
            self._buffered = 0
            waiter.set_result(data)
        elif self._complete:
            waiter.set_result(b"")
        else:
            waiter.set_exception(cast(BaseException, self._error))

    def is_eof(self) -> bool:
        return self._complete and not self._chunks

    def release(self) -> None:
        """Back to the pool if the whole response was read and the connection may be kept; else closed."""
        if self._finished:
            return
        conn = self._conn
        if self._complete and not self._chunks and conn.reusable():
            self._finish(reusable=True)
        else:
            self.close()

    def close(self) -> None:
        if not self._finished:
            self._conn.close()
            self._finish(reusable=False)

    def _finish(self, *, reusable: bool) -> None:
        self._finished = True
        self._disarm()
        self._conn.response = None
        self._done(self._conn, reusable)

    async def wait_headers(self) -> None:
        """Until the status and headers are in. The read timeout counts from the end of the request
        body (a slow upload is bounded by the exchange's deadline alone, as with aiohttp)."""
        try:
            while not self._headers_done:
                if self._error is not None:
                    raise self._error
                if not self._arm(reading=self._conn.body_task is None):
                    raise TimeoutError()
                waiter = self._waiter = self._loop.create_future()
                self._body_waiter = False
                await waiter
        except BaseException:
            self._disarm()  # nobody reads this response: the timer must not keep it
            raise

    def _arm(self, *, reading: bool) -> bool:
        """The current wait ends at the read timeout (when ``reading``) or the deadline; False if that
        is already past. The timer is armed only if none is, or the one armed would fire too late."""
        now = self._loop.time()
        expires = min(now + self._read_timeout, self._deadline) if reading else self._deadline
        if expires <= now:
            return False
        self._expires = expires
        timer = self._timer
        if timer is None or self._timer_at > expires:
            if timer is not None:
                timer.cancel()
            # call_later: uvloop's call_at costs twice as much (its keyword-argument call to call_later)
            self._timer, self._timer_at = self._loop.call_later(expires - now, self._check_expiry), expires
        return True

    def _check_expiry(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done() or self._finished:
            return  # not waiting now: the next wait arms the timer again
        delay = self._expires - self._loop.time()
        if delay > 0:  # the wait began after the timer was armed
            self._timer, self._timer_at = self._loop.call_later(delay, self._check_expiry), self._expires
            return
        self._waiter = None
        waiter.set_exception(TimeoutError())

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is None:
            return
        if waiter.done():  # its reader was cancelled
            self._waiter = None
        elif not self._body_waiter:
            self._waiter = None
            waiter.set_result(None)
        elif self._chunks or self._complete or self._error is not None:
            self._waiter = None
            self._answer(waiter)

    # --- fed by the connection ---
    def _on_headers(
        self, status: int, reason: str, headers: list[tuple[str, str]], until_close: bool
    ) -> None:
        self.status, self.reason = status, reason
        self.headers = CIMultiDictProxy(CIMultiDict(headers))
        self._until_close = until_close
        self._headers_done = True
        self._wake()

    def _on_body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= _HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def _on_complete(self) -> None:
        self._complete = True
        self._wake()

    def _on_lost(self, exc: BaseException | None) -> None:
        if self._headers_done and self._until_close and exc is None:
            self._on_complete()  # the body of an answer without Content-Length ends with the connection
        else:
            what = "while sending the body" if self._headers_done else "before answering"
            self._fail(UpstreamError(f"upstream closed the connection {what}" + (f": {exc}" if exc else "")))

    def _fail(self, error: UpstreamError) -> None:
        if not self._complete and self._error is None:
            self._error = error
        self._wake()


_EMPTY_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection; feeds the response in flight (at most one) from llhttp's callbacks."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.response: UpstreamResponse | None = None
        self.closed = False
        self.idle_since = 0.0
        self.body_task: asyncio.Task[None] | None = None  # a streamed request body still being written
        self.keep_alive = True
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[str, str]] = []
        self._reason = b""
        self._stray = False  # a message after the answer (or with no request): ignored, connection closed
        self._reading_paused = False
        self._framed = False  # Content-Length or chunked seen
        self._informational = False
        self._head = False
        self._can_write: asyncio.Future[None] | None = None
        self.received = (
            False  # any byte of the current exchange's answer: a reused one failing before is stale
        )

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self.response is None:  # bytes nobody asked for: the connection cannot be trusted any more
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.response is not None:
                self.response._fail(UpstreamError(f"invalid HTTP response from upstream: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.response is not None:
            self.response._on_lost(exc)
        if self._can_write is not None:
            self._can_write.cancel()  # a body writer waiting on it is cancelled below; nobody else awaits it
        if self.body_task is not None:
            self.body_task.cancel()

    def pause_writing(self) -> None:
        if self._can_write is None or self._can_write.done():
            self._can_write = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)

    # --- llhttp callbacks ---
    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = b""
        self._framed = False
        response = self.response
        self._stray = response is None or response._headers_done
        if self._stray:
            self.keep_alive = False

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        text = name.decode("utf-8", "surrogateescape")
        if not self._framed:
            lower = text.lower()
            self._framed = lower == "content-length" or (
                lower == "transfer-encoding" and b"chunked" in value.lower()
            )
        self._headers.append((text, value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        self._informational = 100 <= status < 200 and status != 101
        response = self.response
        if self._stray or self._informational or response is None:
            return  # 1xx: the real answer follows
        if status > 599:  # llhttp takes any three digits; relayed, it would be an invalid status line
            self.keep_alive = False
            response._fail(UpstreamError(f"upstream answered an invalid status {status}"))
            return
        if status == 101:  # the client asked for no upgrade (Upgrade is hop-by-hop): nothing to tunnel
            self.keep_alive = False
            response._fail(UpstreamError("upstream switched protocols (101): not proxied"))
            return
        self.keep_alive = self.keep_alive and self._parser.should_keep_alive()
        until_close = not self._framed and status not in _NO_BODY_STATUS and not self._head
        reason = self._reason.decode("utf-8", "surrogateescape")
        response._on_headers(status, reason, self._headers, until_close)
        if self._head:  # llhttp cannot be told the body of an answer to HEAD is empty: end it here
            self.keep_alive = False
            response._on_complete()

    def on_body(self, body: bytes) -> None:
        if self.response is not None and not (self._head or self._stray):
            self.response._on_body(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.response is not None and not (self._head or self._stray):
            self.response._on_complete()

    # --- used by the pool ---
    def reusable(self) -> bool:
        return self.keep_alive and not self.closed and self.body_task is None

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()
        if self.body_task is not None:
            self.body_task.cancel()

    def send(
        self, method: str, head: bytes, body: bytes | AsyncIterator[bytes] | None, length: int | None
    ) -> None:
        """Write the request; a streamed ``body`` goes chunked, or as exactly ``length`` bytes."""
        assert self.transport is not None
        self._head = method == "HEAD"
        if body is None:
            self.transport.write(head)
        elif isinstance(body, bytes):
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
            self.body_task = asyncio.get_running_loop().create_task(self._send_stream(body, length))

    async def _send_stream(self, body: AsyncIterator[bytes], length: int | None) -> None:
        """Write a streamed request body, chunk by chunk; if it fails, the exchange fails with it.

        Framed by ``length``, not one byte more is written, and a body that comes out longer or shorter
        fails the exchange and closes the connection: bytes past the framing would be read upstream as
        the next request on this connection, whoever's it is.
        """
        transport = self.transport
        assert transport is not None
        left = length
        try:
            async for chunk in body:
                if not chunk:
                    continue
                if left is None:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    left -= len(chunk)
                    if left < 0:
                        raise UpstreamError("request body longer than its Content-Length: not sent")
                    transport.write(chunk)
                if self._can_write is not None:
                    await self._can_write
            if left is None:
                transport.write(b"0\r\n\r\n")
            elif left:
                raise UpstreamError("request body shorter than its Content-Length")
            if self.response is not None:
                self.response._wake()  # sent: the wait for the answer is now bounded by the read timeout
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if self.response is not None:
                self.response._fail(UpstreamError(f"request body failed: {exc!r}"))
            self.close()
            return
        self.body_task = None
