"""The guard around every management route: who may call, store outages as 503, refusals audited.

A caller gets in with the management token or through another way (the admin UI's session). Wrong
tokens count against the client's address in a ``SharedAuthThrottle`` shared with the admin sign-in form:
past the limit, every request of that address carrying a token gets 429 until the window has passed,
the right token included (else the lockout would still tell a right guess from a wrong one).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from llmproxy.audit import audit_record
from llmproxy.errors import ProxyError, Refusal, StoreUnavailable
from llmproxy.manage.edge import Handler, authenticate, is_uuid

if TYPE_CHECKING:
    from llmproxy.audit import Auditor
    from llmproxy.auth.throttle import SharedAuthThrottle

__all__ = ("ACTOR", "Guard")

log = logging.getLogger(__name__)

ACTOR = "management_api"
_ACTOR: web.RequestKey[str] = web.RequestKey("manage_actor", str)  # who, when not the bearer token


class Guard:
    """Wraps each handler: admission, 503 for an unreachable store, an audit record per refused change."""

    def __init__(
        self,
        management_token: bytes,
        auditor: Auditor,
        throttle: SharedAuthThrottle,
        authenticate_other: Callable[[web.Request], Awaitable[str | None]] | None = None,
    ) -> None:
        self._management_token = management_token
        self._auditor = auditor
        self._throttle = throttle
        self._authenticate_other = authenticate_other

    def __call__(self, handler: Handler, action: str | None = None) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                await self._admit(request)
                return await handler(request)
            except StoreUnavailable as exc:
                log.warning(
                    "management API: store unavailable on %s %s: %s", request.method, request.path, exc
                )
                refusal = ProxyError(
                    Refusal.SERVICE_UNAVAILABLE, "The database is unavailable, try again later"
                )
                self._audit_refusal(action, request, refusal)
                raise refusal from None
            except ProxyError as exc:
                self._audit_refusal(action, request, exc)
                raise

        return guarded

    def audit(self, action: str, request: web.Request, result: str = "success", **fields: Any) -> None:
        actor = request.get(_ACTOR, ACTOR)
        self._auditor.record(audit_record(action, result, actor=actor, request=request, **fields))

    async def _admit(self, request: web.Request) -> None:
        """401 without a valid way in, 429 while the address is locked out; a request without any
        Authorization header is no guess, so it is neither counted nor locked out."""
        guessing = "Authorization" in request.headers
        if guessing and (wait := await self._throttle.retry_after(request.remote)) is not None:
            raise ProxyError(
                Refusal.TOO_MANY_ATTEMPTS,
                f"Too many failed attempts: try again in {wait} seconds",
                headers={"Retry-After": str(wait)},
            )
        try:
            authenticate(request, self._management_token)
        except ProxyError:  # no valid bearer: the admin UI's session, say, may still let it in
            if actor := self._authenticate_other and await self._authenticate_other(request):
                request[_ACTOR] = actor
                return
            if guessing and (wait := await self._throttle.failed(request.remote)) is not None:
                details = {"failures": self._throttle.max_failures, "retry_after": wait}
                self.audit("manage.auth", request, "denied", reason="too_many_attempts", details=details)
            raise
        await self._throttle.succeeded(request.remote)

    def _audit_refusal(self, action: str | None, request: web.Request, error: ProxyError) -> None:
        if action is None:
            return
        status = error.refusal.status
        raw_id = request.match_info.get("id", "")
        ids = {"project_id": error.project_id} if error.project_id else {}
        if is_uuid(raw_id):
            ids["token_id" if request.path.startswith("/manage/tokens/") else "project_id"] = raw_id.lower()
        details: dict[str, Any] = {"status": status}
        if error.param:
            details["param"] = error.param
        result = "denied" if status in (401, 403, 429) else "error"
        self.audit(action, request, result, reason=error.refusal.code, details=details, **ids)
