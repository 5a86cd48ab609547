"""What guards the sign-in form: a CSRF token bound to the browser, and a brake on guessing.

The form's token is an HMAC, under a per-process secret, of a random nonce that the browser holds in
a short-lived cookie (a signed double submit): a page elsewhere can neither read the nonce nor forge
the HMAC. Failed sign-ins are counted per client address; past a few a minute, the address waits.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ("LoginFormGuard", "LoginThrottle")

MAX_FAILURES = 5
WINDOW = 60.0
MAX_CLIENTS = 10_000


class LoginFormGuard:
    """Issues and checks the sign-in form's CSRF token against the nonce in the browser's cookie."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def new_nonce(self) -> str:
        return secrets.token_urlsafe(24)

    def form_token(self, nonce: str) -> str:
        return hmac.new(self._secret, nonce.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()

    def valid(self, nonce: str | None, form_token: str | None) -> bool:
        if not nonce or not form_token:
            return False
        expected = self.form_token(nonce)
        return hmac.compare_digest(expected.encode(), form_token.encode("utf-8", "surrogateescape"))


class LoginThrottle:
    """Failed sign-ins per client address in a sliding window; bounded, the stalest address forgotten."""

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

    def retry_after(self, client: str) -> int | None:
        """Seconds this client must wait before trying again, or None if it may try now."""
        recent = self._recent(client, self._clock())
        if len(recent) < self._max_failures:
            return None
        return max(1, math.ceil(recent[0] + self._window - self._clock()))

    def failed(self, client: str) -> None:
        now = self._clock()
        recent = self._recent(client, now)
        recent.append(now)
        self._failures[client] = recent[-self._max_failures :]
        self._failures.move_to_end(client)
        while len(self._failures) > self._max_clients:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    def _recent(self, client: str, now: float) -> list[float]:
        return [t for t in self._failures.get(client, ()) if now - t < self._window]
