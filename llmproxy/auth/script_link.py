"""One Lua script called over one pipelined Redis connection: the shared rate limit's round trip.

Every limited request pays this call, and redis-py spends 3-5x the CPU of the round trip on it (pool,
retry wrapper, per-read timeouts, streams; ``scripts/bench_ratelimit.py``: 110-150 against ~40 µs), so
``EVALSHA`` goes out on a plain protocol (replies parsed by hiredis, redis-py's own parser): each
command is written at once, replies come back in order, and a reply late by ``timeout`` closes the
connection (what follows could no longer be matched), failing what was waiting. The next call reconnects.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from typing import cast

import hiredis
from redis.exceptions import ResponseError

from llmproxy.config import RedisSettings
from llmproxy.events.bus import redis_address

__all__ = ("ScriptLink",)


def _command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _retrieve(task: asyncio.Task[_Protocol]) -> None:
    if not task.cancelled():
        task.exception()


class _Protocol(asyncio.Protocol):
    """Commands out, replies matched to their callers in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[object]] = deque()
        self.reader = hiredis.Reader()
        self.open = False
        self.failure: Exception | None = None  # why we gave up on the connection, if we did

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one, without subclassing it
        self.open = True

    def send(self, command: bytes) -> asyncio.Future[object]:
        assert self.transport is not None
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(command)
        return future

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:  # not Redis speaking
                self.give_up(ConnectionError(f"not a Redis reply: {exc}"))
                return
            if reply is False:
                return
            if not self.waiting:  # a reply nobody asked for: the stream cannot be trusted any more
                self.give_up(ConnectionError("a Redis reply nobody asked for"))
                return
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(
                    self.failure or ConnectionError(f"Redis closed the connection: {exc or 'EOF'}")
                )

    def give_up(self, failure: Exception) -> None:
        """Close this connection, failing everything waiting on it with ``failure``."""
        self.failure = failure
        self.open = False
        if self.transport is not None:
            self.transport.abort()

    def expire(self) -> None:
        """A reply is overdue: the replies after it could no longer be matched."""
        self.give_up(TimeoutError("Redis did not answer in time"))


class ScriptLink:
    """``call(key, *args)`` → the script's integer reply: ``EVALSHA``, and ``SCRIPT LOAD`` first on ``NOSCRIPT``."""

    def __init__(self, settings: RedisSettings, script: str, *, timeout: float) -> None:
        self._host, self._port = redis_address(settings)
        self._settings = settings
        self._script = script.encode()
        self._load = _command(b"SCRIPT", b"LOAD", self._script)
        self._head = (
            b"$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n1\r\n" % hashlib.sha1(self._script).hexdigest().encode()
        )
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

    async def call(self, key: str, *args: int) -> int:
        """The script's integer reply for ``key`` and ``args``; ResponseError, ConnectionError, TimeoutError."""
        parts = [key.encode(), *(b"%d" % a for a in args)]
        command = b"*%d\r\n%s" % (len(parts) + 3, self._head)
        command += b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        reply = await self._request(command)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            await self.load()
            reply = await self._request(command)
        if not isinstance(reply, int):
            raise ResponseError(f"the script answered {reply!r}, not an integer")
        return reply

    async def load(self) -> None:
        """Load the script (after a Redis restart, or to check that Redis answers)."""
        reply = await self._request(self._load)
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))

    async def aclose(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()

    async def _request(self, command: bytes) -> object:
        protocol = self._protocol
        if protocol is None or not protocol.open:
            protocol = await self._connect()
        loop = asyncio.get_running_loop()
        overdue = loop.call_later(self._timeout, protocol.expire)
        try:
            return await protocol.send(command)
        finally:
            overdue.cancel()

    async def _connect(self) -> _Protocol:
        """One connection attempt at a time, shared by the callers waiting for it."""
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._open())
            self._connecting.add_done_callback(_retrieve)  # its callers may all have given up
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        protocol: _Protocol | None = None
        try:
            async with asyncio.timeout(self._timeout):
                _, protocol = await loop.create_connection(_Protocol, self._host, self._port)
                hello = []
                if self._settings.password:
                    hello.append(protocol.send(_command(b"AUTH", self._settings.password.encode())))
                if self._settings.db:
                    hello.append(protocol.send(_command(b"SELECT", str(self._settings.db).encode())))
                for reply in await asyncio.gather(*hello):
                    if isinstance(reply, hiredis.ReplyError):
                        raise ConnectionError(f"Redis refused the connection: {reply}")
        except BaseException as exc:
            if protocol is not None:
                protocol.give_up(ConnectionError(f"could not set up the connection: {exc!r}"))
            raise
        assert protocol is not None
        self._protocol = protocol
        return protocol
