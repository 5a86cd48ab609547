"""What guards the sign-in form: a CSRF token bound to the browser (the brake on guessing the
management token, shared with the management API, is ``llmproxy.auth.throttle``).

The form's token is an HMAC, under a secret, of a random nonce that the browser holds in a short-lived
cookie (a signed double submit): a page elsewhere can neither read the nonce nor forge the HMAC. The
secret derives from the management token, so that every instance behind a load balancer accepts the form
another served.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ("LoginFormGuard",)


class LoginFormGuard:
    """Issues and checks the sign-in form's CSRF token against the nonce in the browser's cookie."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    @classmethod
    def for_deployment(cls, management_token: bytes) -> LoginFormGuard:
        """The guard every instance sharing ``management_token`` agrees on (random without one)."""
        if not management_token:
            return cls()
        return cls(hmac.new(management_token, b"llmproxy admin sign-in form", hashlib.sha256).digest())

    def new_nonce(self) -> str:
        return secrets.token_urlsafe(24)

    def form_token(self, nonce: str) -> str:
        return hmac.new(self._secret, nonce.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()

    def valid(self, nonce: str | None, form_token: str | None) -> bool:
        if not nonce or not form_token:
            return False
        expected = self.form_token(nonce)
        return hmac.compare_digest(expected.encode(), form_token.encode("utf-8", "surrogateescape"))
