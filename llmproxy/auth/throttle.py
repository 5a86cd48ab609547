"""A brake on guessing the management token: failed attempts counted per client address.

One instance serves the admin sign-in form and the management API alike, so both doors share one
count. Past a few failures a minute the address waits; memory stays bounded whatever the number of
addresses, the stalest forgotten first, and an IPv6 client counts by its /64 (rotating within it gains
nothing).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ("MAX_CLIENTS", "MAX_FAILURES", "WINDOW", "AuthThrottle", "client_key")

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
