"""What a management request changes, and what its audit record says of it: the columns a PATCH writes,
the limits an audit record names, and the refusals of values that look wrong (an obfuscated key, a taken
name)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from msgspec import UNSET

from llmproxy.errors import ProxyError, Refusal
from llmproxy.manage.schemas import ProjectUpdate
from llmproxy.manage.views import looks_obfuscated
from llmproxy.store.base import Project, Token

__all__ = (
    "SPEND_LIMITS",
    "TOKEN_FIELDS",
    "base_url",
    "name_taken",
    "project_changes",
    "refuse_obfuscated",
    "spend_limits",
    "token_limits",
)


def base_url(url: str | None) -> str | None:
    return None if url is None else url.rstrip("/")


SPEND_LIMITS = ("max_tokens", "max_cost_usd", "tokens_per_minute")
# what PATCH /manage/tokens/{id} may set besides is_active
TOKEN_FIELDS = (
    "max_requests",
    "rate_limit_per_minute",
    "expires_at",
    "name",
    "metadata",
    "allowed_models",
    *SPEND_LIMITS,
)


def spend_limits(holder: Token | Project) -> dict[str, Any]:
    """The spend limits set (the audit record names no limit that is not there)."""
    return {name: value for name in SPEND_LIMITS if (value := getattr(holder, name)) is not None}


def token_limits(token: Token) -> dict[str, Any]:
    """A token's limits for its audit record (never its metadata, which is the client's business)."""
    expires_at = None if token.expires_at is None else token.expires_at.isoformat()
    return {
        "expires_at": expires_at,
        "max_requests": token.max_requests,
        "rate_limit_per_minute": token.rate_limit_per_minute,
        **({"allowed_models": token.allowed_models} if token.allowed_models is not None else {}),
        **spend_limits(token),
    }


def project_changes(body: ProjectUpdate, current: Project, now: datetime) -> dict[str, Any]:
    """The columns a PATCH writes: the fields given, and the active flag only when it flips."""
    fields: dict[str, Any] = {}
    if body.name is not UNSET:
        fields["name"] = body.name.strip()
    if body.api_key is not UNSET:
        fields["api_key"] = body.api_key
    if body.upstream_base_url is not UNSET:
        fields["upstream_base_url"] = base_url(body.upstream_base_url)
    if body.is_active is not UNSET and body.is_active != current.is_active:
        fields["is_active"] = body.is_active
        fields["deactivated_at"] = None if body.is_active else now
    for name in SPEND_LIMITS:
        if (value := getattr(body, name)) is not UNSET:
            fields[name] = value
    return fields


def refuse_obfuscated(api_key: str) -> None:
    if looks_obfuscated(api_key):
        raise ProxyError(
            Refusal.INVALID_FIELD, "api_key looks obfuscated: send the full upstream API key", param="api_key"
        )


def name_taken(exc: ValueError, name: str) -> Exception:
    """409 for the store's ValueError('name'); any other ValueError is a bug, left to become a 500."""
    if str(exc) == "name":
        return ProxyError(Refusal.CONFLICT, f"A project named {name!r} already exists", param="name")
    return exc
