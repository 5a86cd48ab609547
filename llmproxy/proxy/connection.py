"""One upstream HTTP/1.1 connection: the request framed out, the response parsed in by llhttp.

The response reaches its reader as it arrives (``answer.UpstreamResponse``), the socket paused while
too much of it waits unread. ``pool`` owns the connections; nothing here is shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import NamedTuple, cast

import httptools

from llmproxy.proxy.answer import UpstreamResponse
from llmproxy.proxy.transport import UpstreamError

__all__ = ("Origin", "UpstreamConnection", "UpstreamError")

_NO_BODY_STATUS = frozenset({204, 304})


class Origin(NamedTuple):
    """Where a connection goes; the pool keeps its connections per ``key``."""

    key: tuple[str, str, int]  # (scheme, host, port): connections are pooled per origin
    host: str  # connect to
    port: int
    host_header: str
    prefix: str  # the base URL's path, before every request target
    tls: bool


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection; feeds the response in flight (at most one) from llhttp's callbacks."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.response: UpstreamResponse[UpstreamConnection] | None = None
        self.closed = False
        self.idle_since = 0.0
        self.body_task: asyncio.Task[None] | None = None  # a streamed request body still being written
        self.keep_alive = True
        # dropped when the connection is lost: it holds this connection's bound methods, a reference
        # cycle only the collector's old generations would free (15 objects for each connection closed)
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
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
        parser = self._parser
        if (
            self.response is None or parser is None
        ):  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.response is not None:
                self.response._fail(UpstreamError(f"invalid HTTP response from upstream: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._parser = None
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
        parser = self._parser
        assert parser is not None  # (called by the parser itself)
        status = parser.get_status_code()
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
        self.keep_alive = self.keep_alive and parser.should_keep_alive()
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
