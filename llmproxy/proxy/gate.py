"""Who may send a request: its token checked, its model allowed, the request counted against its quota.

Each step raises the refusal as a ProxyError; the refusals SPEC §10 wants in the audit log (and the spend
refusals of issue 17) are audited here, once, with whose token it was when that is known.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from llmproxy.audit import audit_record
from llmproxy.auth.tokens import parse_bearer
from llmproxy.errors import ProxyError, Refusal
from llmproxy.proxy.keys import CALLER
from llmproxy.proxy.models import model_refusal

if TYPE_CHECKING:
    from llmproxy.audit import Auditor
    from llmproxy.auth.authority import Authority, Grant

__all__ = ("Gate",)

# The refusals audited, with their result.
_AUDITED = {
    Refusal.PROJECT_INACTIVE: "denied",
    Refusal.SERVICE_UNAVAILABLE: "error",
    Refusal.BUDGET_EXCEEDED: "denied",
    Refusal.MODEL_NOT_ALLOWED: "denied",
}


class Gate:
    """The proxy's admission steps over the ``authority`` (tokens, quotas, budgets) and the ``auditor``."""

    def __init__(self, authority: Authority, auditor: Auditor) -> None:
        self._authority = authority
        self._auditor = auditor

    async def admit(self, request: web.Request) -> Grant:
        """The request's grant, from its bearer token (kept on the request for the access log)."""
        raw_token = parse_bearer(request.headers.get("Authorization"))
        try:
            request[CALLER] = grant = await self._authority.check(raw_token)
            return grant
        except ProxyError as exc:
            self._audit(request, exc, None)
            raise

    def allow_model(self, request: web.Request, grant: Grant, body: bytes | None, plain: bytes) -> None:
        """Refuse (403 model_not_allowed) a model the token's allowed_models does not match."""
        assert grant.limits is not None
        patterns = grant.limits.allowed_models
        exc = model_refusal(patterns, request.path, body, plain) if patterns is not None else None
        if exc is not None:
            self._audit(request, exc, grant)
            raise exc

    async def count(self, request: web.Request, grant: Grant) -> None:
        """The request counted (a limited token's atomically in the store): refused past its quota."""
        try:
            await self._authority.count_request(grant)
        except ProxyError as exc:
            self._audit(request, exc, grant)
            raise

    def count_cache_hit(self, grant: Grant) -> None:
        self._authority.count_cache_hit(grant)

    def _audit(self, request: web.Request, exc: ProxyError, grant: Grant | None) -> None:
        result = _AUDITED.get(exc.refusal)
        if result is None:
            return
        record = audit_record("proxy_request", result, reason=exc.refusal.code, request=request)
        whose = grant or exc  # the grant once the token is known, else whom the refusal names
        record.project_id, record.token_id = whose.project_id, whose.token_id
        self._auditor.record(record)
