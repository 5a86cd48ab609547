"""An upstream answer as its reader sees it: status and headers, then the body as it arrives.

The connection (``connection.UpstreamConnection``) feeds it from llhttp's callbacks; the reader takes
the bytes with ``readany``, the socket paused while more than ``_HIGH_WATER`` bytes wait unread, or has
them handed to a sink as they arrive with ``pipe`` (the relay's way: no await per chunk).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, cast

from multidict import CIMultiDict, CIMultiDictProxy

from llmproxy.proxy.transport import UpstreamError

__all__ = ("Carrier", "UpstreamResponse")

_HIGH_WATER = 256 * 1024  # response bytes buffered before the upstream socket stops being read


class Carrier(Protocol):
    """What an answer needs of the connection it arrives on."""

    body_task: asyncio.Task[None] | None
    response: Any  # the answer in flight, None once it is over

    def reusable(self) -> bool: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...


C = TypeVar("C", bound=Carrier)


class UpstreamResponse(Generic[C]):
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
        "_sink",
    )

    def __init__(
        self,
        conn: C,
        done: Callable[[C, bool], None],
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
        self._sink: Callable[[bytes], bool] | None = None  # pipe's, while its waiter waits

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
        if self._chunks:
            waiter.set_result(self._take())
        elif self._complete:
            waiter.set_result(b"")
        else:
            waiter.set_exception(cast(BaseException, self._error))

    def pipe(self, sink: Callable[[bytes], bool]) -> asyncio.Future[bool]:
        """Hand each body chunk to ``sink`` as it arrives, from the connection's callback, until the end
        (False) or until ``sink`` returns False: it can take no more now (True: pipe again once it can;
        meanwhile the answer buffers, and stops reading past ``_HIGH_WATER``). Raises as ``readany`` does;
        the read timeout bounds each gap between chunks.

        An open stream costs no object per chunk this way: its one future waits for the end, so the
        collector's young generation has nothing of a waiting stream's to walk (docs/performance.md).
        """
        waiter: asyncio.Future[bool] = self._loop.create_future()
        if self._chunks and not sink(self._take()):
            waiter.set_result(True)
            return waiter
        if self._complete:
            waiter.set_result(False)
        elif self._error is not None:
            waiter.set_exception(self._error)
        elif self._arm(reading=True):
            self._waiter, self._body_waiter, self._sink = waiter, True, sink
        else:
            waiter.set_exception(TimeoutError())
        return waiter

    def _take(self) -> bytes:
        """What is buffered (there is some), the socket read again if it was paused for it."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if self._buffered >= _HIGH_WATER:
            self._conn.resume_reading()
        self._buffered = 0
        return data

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
        self._sink = None
        self._disarm()
        waiter = self._waiter
        if waiter is not None:  # closed under a reader still waiting (not the relay's way): end its wait
            self._waiter = None
            if not waiter.done():
                waiter.set_exception(UpstreamError("upstream answer closed while being read"))
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
        self._waiter = self._sink = None
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
            self._waiter = self._sink = None
        elif not self._body_waiter:
            self._waiter = None
            waiter.set_result(None)
        elif self._sink is not None:  # pipe's: its chunks went to the sink, so only the end wakes it
            if self._complete or self._error is not None:
                self._waiter = self._sink = None
                if self._complete:
                    waiter.set_result(False)
                else:
                    waiter.set_exception(cast(BaseException, self._error))
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
        sink = self._sink
        if sink is not None:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                now = self._loop.time()
                expires = now + self._read_timeout
                self._expires = expires if expires < self._deadline else self._deadline
                if not sink(data):
                    self._waiter = self._sink = None
                    waiter.set_result(True)
                return
            self._waiter = self._sink = None  # its reader was cancelled: buffer, as for readany
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
