"""A brake on guessing the management token: failed attempts counted per client address.

The admin sign-in form and the management API share one count, and so do all instances on one database:
``SharedAuthThrottle`` keeps the failures in the store, so N instances behind a load balancer do not
multiply the allowance by N. Past a few failures a minute the address waits. When the store is down it
fails open to ``AuthThrottle``, this instance's own count (bounded, the stalest address forgotten). An
IPv6 client counts by its /64 (rotating within it gains nothing).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

from llmproxy.errors import StoreUnavailable
from llmproxy.store.base import Store

__all__ = ("MAX_CLIENTS", "MAX_FAILURES", "WINDOW", "AuthThrottle", "SharedAuthThrottle", "client_key")

log = logging.getLogger(__name__)

MAX_FAILURES = 5
WINDOW = 60.0
MAX_CLIENTS = 10_000


def client_key(address: str | None) -> str:
    """Whom failures are counted against: the IPv4 address, or the /64 of an IPv6 one."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip), 64), strict=False))
    return str(ip)


class AuthThrottle:
    """Failed attempts per client address in a sliding window; bounded, the stalest address forgotten."""

    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_failures = max_failures
        self._window = window
        self._max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, list[float]] = OrderedDict()  # least recently failed first

    @property
    def max_failures(self) -> int:
        return self._max_failures

    def retry_after(self, address: str | None) -> int | None:
        """Seconds this address must wait before trying again, or None if it may try now."""
        now = self._clock()
        return self._wait(self._recent(client_key(address), now), now)

    def failed(self, address: str | None) -> int | None:
        """Count a failure; the seconds to wait if this one locked the address out, else None."""
        client, now = client_key(address), self._clock()
        recent = self._recent(client, now)
        recent.append(now)
        self._failures[client] = recent = recent[-self._max_failures :]
        self._failures.move_to_end(client)
        while len(self._failures) > self._max_clients:
            self._failures.popitem(last=False)
        return self._wait(recent, now)

    def succeeded(self, address: str | None) -> None:
        self._failures.pop(client_key(address), None)

    def _recent(self, client: str, now: float) -> list[float]:
        return [t for t in self._failures.get(client, ()) if now - t < self._window]

    def _wait(self, recent: list[float], now: float) -> int | None:
        """Until the oldest of the last ``max_failures`` failures leaves the window, rounded up."""
        if len(recent) < self._max_failures:
            return None
        return max(1, math.ceil(recent[0] + self._window - now))


class SharedAuthThrottle:
    """``AuthThrottle``'s questions answered from the failures of every instance, kept in the store.

    Each failure is counted locally too, so that while the store is down (logged once) this instance
    still holds back an address on its own count: fail open, never a 5xx for the throttle's sake.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._max_failures = max_failures
        self._window = window
        self._clock = clock  # wall-clock seconds: instances on several hosts compare them
        self._local = AuthThrottle(max_failures=max_failures, window=window, clock=clock)
        self._store_down = False

    @property
    def max_failures(self) -> int:
        return self._max_failures

    async def retry_after(self, address: str | None) -> int | None:
        """Seconds this address must wait before trying again, or None if it may try now."""
        now = self._clock()
        try:
            failures = await self._store.auth_failures(client_key(address), self._moment(now - self._window))
        except StoreUnavailable as exc:
            self._down(exc)
            return self._local.retry_after(address)
        self._up()
        return self._wait(failures, now)

    async def failed(self, address: str | None) -> int | None:
        """Count a failure; the seconds to wait if this one locked the address out, else None."""
        now = self._clock()
        local_wait = self._local.failed(address)
        try:
            failures = await self._store.record_auth_failure(
                client_key(address), self._moment(now), self._moment(now - self._window)
            )
        except StoreUnavailable as exc:
            self._down(exc)
            return local_wait
        self._up()
        return self._wait(failures, now)

    async def succeeded(self, address: str | None) -> None:
        self._local.succeeded(address)
        try:
            await self._store.clear_auth_failures(client_key(address))
        except StoreUnavailable as exc:
            self._down(exc)

    def _wait(self, failures: list[datetime], now: float) -> int | None:
        """Until the oldest of the last ``max_failures`` failures leaves the window, rounded up."""
        if len(failures) < self._max_failures:
            return None
        oldest = failures[-self._max_failures].timestamp()
        return max(1, math.ceil(oldest + self._window - now))

    @staticmethod
    def _moment(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    def _down(self, exc: StoreUnavailable) -> None:
        if not self._store_down:
            self._store_down = True
            log.warning(
                "sign-in throttle: the store is unavailable (%s); counting failures per instance", exc
            )

    def _up(self) -> None:
        if self._store_down:
            self._store_down = False
            log.info("sign-in throttle: the store answers again; failures are counted across instances")
