"""When to retry a failed delivery and how long to wait: pure functions, tested in microseconds.

Transient: network errors, timeouts, 408, 409, 429 and 5xx (as openai-python and SPEC §7 do);
every other status is permanent. Waits are exponential with full jitter, never shorter than the
server's Retry-After, never longer than the cap.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from typing import Literal

import aiohttp

__all__ = ("Verdict", "backoff_s", "classify", "parse_retry_after")

Verdict = Literal["transient", "permanent"]

TRANSIENT_STATUSES = frozenset({408, 409, 429})


def classify(status: int | None, exc: BaseException | None = None) -> Verdict:
    """Whether a failed delivery is worth retrying, from the HTTP status or the exception raised."""
    if status is not None:
        return "transient" if status in TRANSIENT_STATUSES or status >= 500 else "permanent"
    if isinstance(exc, aiohttp.ClientResponseError):
        return classify(exc.status)
    if isinstance(exc, aiohttp.InvalidURL):  # a misconfigured endpoint will not heal by waiting
        return "permanent"
    if isinstance(exc, TimeoutError | OSError | aiohttp.ClientError):
        return "transient"
    return "permanent"


def parse_retry_after(value: str | float | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delta-seconds or an HTTP-date; None if unusable."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return max(0.0, float(value))
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_s(
    attempt: int,
    retry_after: str | float | None = None,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    rng: Callable[[], float] = random.random,
    now: float | None = None,
) -> float:
    """Delay before retry number `attempt` (1 = first retry): full jitter over base·2^(attempt-1).

    A Retry-After (seconds or HTTP-date) is a floor; the result never exceeds `cap`, so a server
    asking for an hour does not park the dispatcher for an hour (it answers 429 again instead).
    """
    ceiling = min(cap, base * 2.0 ** min(max(0, attempt - 1), 62))
    delay = rng() * ceiling
    floor = parse_retry_after(retry_after, now=now)
    if floor is not None:
        delay = max(delay, floor)
    return min(cap, delay)
