"""Per-token requests-per-minute limit, in this process: a sliding window log.

Each token keeps the times of its allowed requests of the last 60 s, so no 60 s span ever holds more than
``limit``, and a refusal's ``Retry-After`` is when the oldest request that matters leaves the window:
exact, never more than 60 s (``shared_ratelimit.py`` keeps the same log in Redis). Requests less than
``GRAIN`` apart share one entry stamped with the latest of them, so a token holds at most 60/GRAIN + 1
entries whatever its limit; that errs by less than GRAIN on the strict side. Only allowed requests are
logged: a client hammering a limit still gets through as the window slides.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Container
from typing import NamedTuple

__all__ = ("GRAIN", "WINDOW", "RateLimiter", "RateVerdict")

WINDOW = 60.0
GRAIN = 0.5
# OpenAI's names (SDKs and users read them); ours move under PREFIXED when the upstream sent its own.
_NAMES = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
_PREFIXED = tuple("x-llmproxy-" + name[2:] for name in _NAMES)


class RateVerdict(NamedTuple):
    """One request's answer from a limiter."""

    allowed: bool
    retry_after: int  # whole seconds until one more request would be allowed (0 when allowed), 1..60
    limit: int
    remaining: int  # requests still allowed in the window, this one counted
    reset: float  # seconds until the oldest counted request leaves the window (a slot frees)

    def headers(self, upstream: Container[str] = ()) -> list[tuple[str, str]]:
        """OpenAI-style ``x-ratelimit-*-requests``. ``upstream`` holds the header names of the upstream's
        answer: when it sent its own ``x-ratelimit-limit-requests`` (OpenAI does, for the organisation's
        key), ours are ``x-llmproxy-ratelimit-*`` so that theirs pass through untouched."""
        names = _PREFIXED if _NAMES[0] in upstream else _NAMES
        values = (str(self.limit), str(self.remaining), _duration(self.reset))
        return list(zip(names, values, strict=True))

    def refusal_headers(self) -> dict[str, str]:
        """A rate-limited 429's: ``Retry-After`` and the window (no upstream answer to defer to)."""
        return {"Retry-After": str(self.retry_after), **dict(self.headers())}


class _Log:
    """One token's allowed requests: entry i is ``counts[i]`` requests, the latest at ``stamps[i]``."""

    __slots__ = ("stamps", "counts", "total", "opened")

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.counts: list[int] = []
        self.total = 0
        self.opened = -math.inf  # when the last entry began: requests within GRAIN of it join it


class RateLimiter:
    """``hit(key, limit)`` → RateVerdict; the clock is injectable for tests."""

    def __init__(self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self._logs: dict[str, _Log] = {}
        self._max_keys = max(1, max_keys)
        self._clock = clock

    def __len__(self) -> int:
        return len(self._logs)

    def entries(self, key: str) -> int:
        """How many entries ``key`` holds (its memory), for tests and diagnostics."""
        log = self._logs.get(key)
        return 0 if log is None else len(log.stamps)

    def hit(self, key: str, limit: int, now: float | None = None) -> RateVerdict:
        """Count one request for ``key`` if fewer than ``limit`` were allowed in the last 60 s."""
        if now is None:
            now = self._clock()
        if limit <= 0:
            return RateVerdict(False, int(WINDOW), 0, 0, WINDOW)
        log = self._logs.get(key)
        if log is None:
            if len(self._logs) >= self._max_keys:
                self.prune(now)
            log = self._logs[key] = _Log()
        else:
            _expire(log, now)
        stamps = log.stamps
        if log.total < limit:
            log.total += 1
            if now - log.opened < GRAIN:
                stamps[-1] = max(stamps[-1], now)
                log.counts[-1] += 1
            else:
                stamps.append(now)
                log.counts.append(1)
                log.opened = now
            return RateVerdict(True, 0, limit, limit - log.total, _until(stamps[0], now))
        # Refused: total - limit + 1 of the logged requests must leave first, the oldest first.
        due, counts, i = log.total - limit + 1, log.counts, 0
        while due > counts[i]:
            due -= counts[i]
            i += 1
        wait = _until(stamps[i], now)
        return RateVerdict(False, max(1, math.ceil(wait - 1e-9)), limit, 0, wait)

    def forget(self, key: str) -> None:
        self._logs.pop(key, None)

    def prune(self, now: float | None = None) -> None:
        """Drop keys idle for a window; if still full, the oldest tenth (amortised O(1) per key)."""
        if now is None:
            now = self._clock()
        horizon = now - WINDOW
        for key in [k for k, log in self._logs.items() if not log.stamps or log.stamps[-1] <= horizon]:
            del self._logs[key]
        if len(self._logs) >= self._max_keys:
            excess = len(self._logs) - self._max_keys + max(1, self._max_keys // 10)
            for key in list(self._logs)[:excess]:
                del self._logs[key]


def _expire(log: _Log, now: float) -> None:
    """Drop the entries a full window old (as Redis drops scores <= now - window)."""
    stamps = log.stamps
    if not stamps or stamps[0] > now - WINDOW:
        return
    horizon = now - WINDOW
    gone = 0
    while gone < len(stamps) and stamps[gone] <= horizon:
        log.total -= log.counts[gone]
        gone += 1
    del stamps[:gone], log.counts[:gone]


def _until(stamp: float, now: float) -> float:
    """Seconds until a request logged at ``stamp`` leaves the window; never more than the window
    (a clock stepped back must not ask for longer)."""
    return min(WINDOW, max(0.0, stamp + WINDOW - now))


def _duration(seconds: float) -> str:
    """As OpenAI writes them: ``20ms``, ``1s``, ``59.5s``, ``1m0s``."""
    ms = round(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:g}s"
    return f"{ms // 60_000}m{(ms % 60_000) / 1000:g}s"
