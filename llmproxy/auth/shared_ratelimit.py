"""Per-token requests-per-minute limit shared by every instance through Redis: one Lua call per request,
the calls of requests waiting at the same moment pipelined in one round trip.

A sliding window log: each token's allowed requests of the last 60 s are the members of one sorted set
(``<prefix>ratelimit:<token id>``, scored by Redis's clock in µs, expiring 60 s after the last one). A
request passes while fewer than ``limit`` are in it, so no 60 s span ever holds more than ``limit``, and
a refusal's ``Retry-After`` is exactly when the oldest entry that matters leaves the window (≤ 60 s).
When Redis fails, ``hit`` answers None (the caller counts in its own process), the outage is logged
once, ``/ready`` says so, and ``run`` tries Redis again every ``retry_every`` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from llmproxy.auth.ratelimit import RateVerdict
from llmproxy.config import RedisSettings
from llmproxy.redis_client import connect_redis
from llmproxy.redis_keys import PREFIX, rate_limit_prefix

__all__ = ("DEGRADED", "SharedRateLimiter")

log = logging.getLogger(__name__)

WINDOW_US = 60_000_000
DEGRADED = "degraded: local fallback"
REDIS_ERRORS = (RedisError, OSError, TimeoutError)
REDIS_TIMEOUT = 0.25  # a limited request waits at most this long (twice: one retry) on a Redis going away

# KEYS[1]: the token's log; ARGV[1]: its limit; ARGV[2]: the window in µs.
# Returns {µs until one more would be allowed (0: this one is counted), requests left, µs until the
# oldest logged request leaves the window}.
_SCRIPT = """
local key, limit, window = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count < limit then
  local stamp = now
  while redis.call('ZADD', key, 'NX', stamp, stamp) == 0 do stamp = stamp + 1 end
  redis.call('PEXPIRE', key, math.ceil(window / 1000))
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return {0, limit - count - 1, math.max(0, tonumber(first[2]) + window - now)}
end
local oldest = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
local wait = math.max(1, tonumber(oldest[2]) + window - now)
return {wait, 0, wait}
"""


class SharedRateLimiter:
    """``hit`` → (allowed, retry_after_s) from Redis, or None while Redis is unreachable."""

    def __init__(self, settings: RedisSettings, *, prefix: str = PREFIX, retry_every: float = 1.0) -> None:
        # One retry: a pooled connection Redis closed (a restart) is not an outage.
        self._redis: Redis = connect_redis(
            settings, socket_timeout=REDIS_TIMEOUT, connect_timeout=REDIS_TIMEOUT
        )
        self._sha = hashlib.sha1(_SCRIPT.encode()).hexdigest()  # how Redis names the script (EVALSHA)
        # Hits waiting together share one pipelined round trip: while a batch is out, the next gathers.
        self._waiting: list[tuple[str, int, asyncio.Future[list[int]]]] = []
        self._sending: asyncio.Task[None] | None = None
        self._busy = False  # a round trip is out
        self._prefix = rate_limit_prefix(prefix)
        self._retry_every = retry_every
        self._failed = asyncio.Event()  # set when a call fails: wakes ``run``
        self.degraded = False

    async def hit(self, token_id: str, limit: int) -> RateVerdict | None:
        """Count one request of ``token_id`` if under ``limit`` per minute; one Redis round trip."""
        if self.degraded:
            return None
        if limit <= 0:
            return RateVerdict(False, WINDOW_US // 1_000_000, 0, 0, WINDOW_US / 1e6)
        try:
            wait_us, remaining, reset_us = await self._round_trip(self._prefix + token_id, limit)
        except REDIS_ERRORS as exc:
            self._fail(exc)
            return None
        reset = min(int(reset_us), WINDOW_US) / 1e6  # Redis TIME and the scores are one clock: ≤ 60 s
        if wait_us == 0:
            return RateVerdict(True, 0, limit, int(remaining), reset)
        return RateVerdict(False, -(-min(int(wait_us), WINDOW_US) // 1_000_000), limit, 0, reset)

    async def _round_trip(self, key: str, limit: int) -> list[int]:
        """The script's answer for one hit. Alone, it goes at once on its own; while a round trip is
        out, it waits with the others that come meanwhile, and they go in one pipeline after it."""
        if self._busy:
            answer: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
            self._waiting.append((key, limit, answer))
            return await answer
        self._busy = True
        try:
            try:
                return await self._redis.evalsha(self._sha, 1, key, limit, WINDOW_US)  # type: ignore[no-any-return]
            except NoScriptError:  # Redis restarted or its scripts were flushed: load, then once more
                await self._redis.script_load(_SCRIPT)
                return await self._redis.evalsha(self._sha, 1, key, limit, WINDOW_US)  # type: ignore[no-any-return]
        finally:
            self._busy = False
            if self._waiting:  # even if this hit was cancelled: the others must not wait forever
                self._busy = True
                self._sending = asyncio.get_running_loop().create_task(self._send(), name="rate-limit-batch")

    async def _send(self) -> None:
        """Send every waiting hit in one pipelined round trip (each EVALSHA atomic, in arrival order),
        again while more wait; the hits that came meanwhile go in the next batch."""
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._answer(batch)
        finally:
            self._busy = False
            self._sending = None

    async def _answer(self, batch: list[tuple[str, int, asyncio.Future[list[int]]]]) -> None:
        try:
            results = await self._evaluate(batch)
            if any(isinstance(r, NoScriptError) for r in results):  # Redis restarted: load, send once more
                await self._redis.script_load(_SCRIPT)
                results = await self._evaluate(batch)
        except (*REDIS_ERRORS, asyncio.CancelledError) as exc:
            error = exc if isinstance(exc, Exception) else RedisError("rate limit batch cancelled")
            for _, _, answer in batch:
                if not answer.done():
                    answer.set_exception(error)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, _, answer), result in zip(batch, results, strict=True):
            if answer.done():  # its request went away meanwhile (it was counted all the same)
                continue
            if isinstance(result, Exception):
                answer.set_exception(result)
            else:
                answer.set_result(result)

    async def _evaluate(self, batch: list[tuple[str, int, asyncio.Future[list[int]]]]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, limit, _ in batch:
                pipe.evalsha(self._sha, 1, key, limit, WINDOW_US)
            return await pipe.execute(raise_on_error=False)

    async def run(self) -> None:
        """Load the script now, and again ``retry_every`` seconds after each failure until Redis answers."""
        while True:
            try:
                await self._redis.script_load(_SCRIPT)
            except REDIS_ERRORS as exc:
                self._fail(exc)
                await asyncio.sleep(self._retry_every)
                continue
            self._failed.clear()
            if self.degraded:
                self.degraded = False
                log.info("rate limit: Redis answers again; limits are shared across instances")
            await self._failed.wait()
            await asyncio.sleep(self._retry_every)

    async def state(self) -> str | None:
        """For /ready: None when limits are shared, else DEGRADED (not a failure: requests still pass)."""
        return DEGRADED if self.degraded else None

    async def aclose(self) -> None:
        sending = self._sending
        if sending is not None:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
        for _, _, answer in self._waiting:  # hits that never went: they fall back to the local limit
            if not answer.done():
                answer.set_exception(RedisError("rate limiter closed"))
        self._waiting = []
        await self._redis.aclose()

    @property
    def redis(self) -> Redis:
        """The connection, shared with the tokens-per-minute windows (token_rate.py)."""
        return self._redis

    def fail(self, exc: BaseException) -> None:
        """A call to Redis failed (here or in the TPM windows): limit per instance until it answers."""
        self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self._failed.set()
        if not self.degraded:
            self.degraded = True
            log.warning(
                "rate limit: Redis unreachable (%s: %s); limiting per instance until it answers",
                type(exc).__name__,
                exc,
            )
