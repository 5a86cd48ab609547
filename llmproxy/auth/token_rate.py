"""Tokens per minute (TPM) of a token or project: prompt + completion tokens of the last 60 s, charged with
each response's real usage once it is known, checked before a request is forwarded.

A window is one bucket per second (at most 61 per key). With shared limits (Redis, as for the request
rate) the buckets are a hash per key, ``<prefix>tpm:<key>``, second -> tokens, expiring a minute after its
last charge: every instance charges it (batched, with the 1 s flush) and reads it. Without Redis, or while
Redis fails, each instance counts alone. A request is let through while the window holds fewer tokens than
the limit, so the request that crosses it completes (its size is known only after) and the next waits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis

from llmproxy.auth.ratelimit import RateVerdict
from llmproxy.auth.shared_ratelimit import REDIS_ERRORS, SharedRateLimiter

__all__ = ("TokenRate", "TokenWindows")

log = logging.getLogger(__name__)

WINDOW = 60

# KEYS[1]: the hash; returns {now (Redis seconds), second, tokens, second, tokens, …} of the live buckets
_READ = """
local key, window = KEYS[1], tonumber(ARGV[1])
local now = tonumber(redis.call('TIME')[1])
local all = redis.call('HGETALL', key)
local live = {now}
for i = 1, #all, 2 do
  local second = tonumber(all[i])
  if second <= now - window then
    redis.call('HDEL', key, all[i])
  else
    live[#live + 1] = second
    live[#live + 1] = tonumber(all[i + 1])
  end
end
return live
"""
# KEYS[1]: the hash; ARGV[1]: tokens; ARGV[2]: expiry in seconds
_CHARGE = """
local now = redis.call('TIME')[1]
redis.call('HINCRBY', KEYS[1], now, ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 0
"""


def verdict(buckets: dict[int, int], limit: int, now: int, extra: int = 0) -> RateVerdict:
    """Allowed while the window holds fewer than ``limit`` tokens; else wait until enough buckets leave."""
    used = sum(buckets.values()) + extra
    if used < limit:
        return RateVerdict(True, 0, limit, limit - used, float(WINDOW))
    for second in sorted(buckets):
        used -= buckets[second]
        if used < limit:
            return RateVerdict(False, max(1, second + WINDOW - now), limit, 0, float(second + WINDOW - now))
    return RateVerdict(False, WINDOW, limit, 0, float(WINDOW))


class TokenWindows:
    """Per-key buckets in this process: ``charge`` and ``check``."""

    def __init__(self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self._windows: dict[str, dict[int, int]] = {}
        self._max_keys = max_keys
        self._clock = clock

    def charge(self, key: str, tokens: int) -> None:
        now = int(self._clock())
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self._max_keys:
                self.prune()
            window = self._windows[key] = {}
        window[now] = window.get(now, 0) + tokens

    def check(self, key: str, limit: int) -> RateVerdict:
        now = int(self._clock())
        window = self._windows.get(key)
        if not window:
            return RateVerdict(True, 0, limit, limit, float(WINDOW))
        for second in [s for s in window if s <= now - WINDOW]:
            del window[second]
        return verdict(window, limit, now)

    def prune(self) -> None:
        """Forget the windows a minute idle; if still full, the oldest tenth."""
        horizon = int(self._clock()) - WINDOW
        for key in [k for k, w in self._windows.items() if not w or max(w) <= horizon]:
            del self._windows[key]
        if len(self._windows) >= self._max_keys:
            for key in list(self._windows)[: max(1, self._max_keys // 10)]:
                del self._windows[key]


class TokenRate:
    """TPM for the Authority: the shared windows in Redis when limits are shared, else this process's."""

    def __init__(
        self, shared: SharedRateLimiter | None, *, prefix: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.local = TokenWindows(clock=clock)
        self._shared = shared
        self._redis: Redis | None = shared.redis if shared is not None else None
        self._read = self._redis.register_script(_READ) if self._redis is not None else None
        self._charge = self._redis.register_script(_CHARGE) if self._redis is not None else None
        self._prefix = prefix
        self._unsent: dict[str, int] = {}  # charged here, not yet in Redis

    def charge(self, key: str, tokens: int) -> None:
        """A response's tokens (off the hot path): counted here at once, in Redis at the next ``send``."""
        if tokens <= 0:
            return
        self.local.charge(key, tokens)
        if self._redis is not None:
            self._unsent[key] = self._unsent.get(key, 0) + tokens

    async def check(self, key: str, limit: int) -> RateVerdict:
        """Whether a request of ``key`` may go now: one Redis round trip when shared (and Redis answers)."""
        shared = self._shared
        if self._read is not None and shared is not None and not shared.degraded:
            try:
                live = await self._read(keys=(self._prefix + key,), args=(WINDOW,))
            except REDIS_ERRORS as exc:
                shared.fail(exc)
            else:
                now = int(live[0])
                buckets = {int(live[i]): int(live[i + 1]) for i in range(1, len(live) - 1, 2)}
                return verdict(buckets, limit, now, extra=self._unsent.get(key, 0))
        return self.local.check(key, limit)

    async def send(self) -> None:
        """Add what was charged here since the last send to the shared windows (one pipeline)."""
        if not self._unsent or self._redis is None or self._charge is None:
            return
        unsent, self._unsent = self._unsent, {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, tokens in unsent.items():
                    await self._charge(keys=(self._prefix + key,), args=(tokens, WINDOW + 1), client=pipe)
                await pipe.execute()
        except REDIS_ERRORS as exc:  # lost for the others; this instance still counted them
            if self._shared is not None:
                self._shared.fail(exc)
            log.debug("TPM charges of %d keys not shared: %s", len(unsent), exc)
        except Exception:  # (a client closed at shutdown): never fail the flush that called this
            log.debug("TPM charges of %d keys not shared", len(unsent), exc_info=True)
