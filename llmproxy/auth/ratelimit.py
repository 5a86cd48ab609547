"""Per-token requests-per-minute limit, in this process: a sliding-window counter.

Each token keeps the counts of the current and the previous fixed minute; the requests of the last
60 s are estimated as ``previous * (unseen part of the previous minute) + current``. That is O(1)
memory per token, has no burst at window edges (unlike a fixed window), and gives an exact
``Retry-After``. Only allowed requests are counted, so a client hammering a limit still gets through
as the window slides. Several proxy instances each allow the full rate: shared limits are
``shared_ratelimit.py``'s, with this one as the fallback while Redis is unreachable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ("RateLimiter",)

WINDOW = 60.0


class _Window:
    __slots__ = ("start", "previous", "current")

    def __init__(self, start: float) -> None:
        self.start = start
        self.previous = 0
        self.current = 0


class RateLimiter:
    """``hit(key, limit)`` → (allowed, retry_after_seconds); the clock is injectable for tests."""

    def __init__(self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self._windows: dict[str, _Window] = {}
        self._max_keys = max(1, max_keys)
        self._clock = clock

    def __len__(self) -> int:
        return len(self._windows)

    def hit(self, key: str, limit: int, now: float | None = None) -> tuple[bool, int]:
        """Count one request for ``key`` if it is within ``limit`` per minute.

        Returns (True, 0) when allowed, else (False, whole seconds until one more would be allowed, ≥ 1).
        """
        if now is None:
            now = self._clock()
        if limit <= 0:
            return False, int(WINDOW)
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self._max_keys:
                self.prune(now)
            window = self._windows[key] = _Window(now - now % WINDOW)
        _slide(window, now)
        elapsed = now - window.start
        estimate = window.previous * (WINDOW - elapsed) / WINDOW + window.current
        if estimate + 1 <= limit:
            window.current += 1
            return True, 0
        return False, _retry_after(window, limit, elapsed)

    def forget(self, key: str) -> None:
        self._windows.pop(key, None)

    def prune(self, now: float | None = None) -> None:
        """Drop keys idle for two windows; if still full, the oldest tenth (amortised O(1) per key)."""
        if now is None:
            now = self._clock()
        horizon = now - 2 * WINDOW
        for key in [k for k, w in self._windows.items() if w.start <= horizon]:
            del self._windows[key]
        if len(self._windows) >= self._max_keys:
            excess = len(self._windows) - self._max_keys + max(1, self._max_keys // 10)
            for key in list(self._windows)[:excess]:
                del self._windows[key]


def _slide(window: _Window, now: float) -> None:
    """Move the window so that ``now`` falls in its current minute."""
    elapsed = now - window.start
    if elapsed < WINDOW:
        return
    start = now - now % WINDOW
    window.previous = window.current if elapsed < 2 * WINDOW else 0
    window.current = 0
    window.start = start


def _retry_after(window: _Window, limit: int, elapsed: float) -> int:
    """Seconds until ``estimate + 1 <= limit`` holds again, assuming no other request is allowed."""
    room = limit - 1 - window.current  # how much of the previous minute may still weigh in
    if room >= 0 and window.previous > 0:
        # previous * (WINDOW - t) / WINDOW <= room  ⇔  t >= WINDOW * (1 - room / previous)
        wait = WINDOW * (1 - room / window.previous) - elapsed
    else:
        # Only after this minute ends, when the current count becomes the previous one.
        until_next = WINDOW - elapsed
        weighted = WINDOW * (1 - (limit - 1) / window.current) if window.current else 0.0
        wait = until_next + max(0.0, weighted)
    return max(1, math.ceil(wait - 1e-9))
