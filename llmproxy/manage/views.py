"""What the management API shows of a stored record: its response Struct, secrets obfuscated, and the
token's computed ``status``."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import msgspec

from llmproxy.manage.schemas import AuditEventOut, AuditPage, ProjectOut, TokenOut, TokenStatus
from llmproxy.store.base import AuditRecord, Project, Token

__all__ = (
    "audit_event_out",
    "audit_page",
    "looks_obfuscated",
    "obfuscate_api_key",
    "project_out",
    "token_out",
    "token_status",
)


def obfuscate_api_key(key: str) -> str:
    """First 3 + "…" + last 4 (``sk-…abcd``); keys too short to spare 7 characters show nothing."""
    if len(key) < 12:
        return "…"
    return f"{key[:3]}…{key[-4:]}"


def looks_obfuscated(key: str) -> bool:
    """An obfuscated key sent back by mistake (from this API or the Go reference's)."""
    return "…" in key or "..." in key or "****" in key


def project_out(project: Project) -> ProjectOut:
    return ProjectOut(
        id=project.id,
        name=project.name,
        api_key=obfuscate_api_key(project.api_key),
        upstream_base_url=project.upstream_base_url,
        is_active=project.is_active,
        created_at=project.created_at,
        updated_at=project.updated_at,
        deactivated_at=project.deactivated_at,
        max_tokens=project.max_tokens,
        max_cost_usd=project.max_cost_usd,
        tokens_per_minute=project.tokens_per_minute,
        prompt_tokens=project.prompt_tokens,
        completion_tokens=project.completion_tokens,
        cached_tokens=project.cached_tokens,
        cost_usd=project.cost_usd,
    )


def token_status(token: Token, now: datetime) -> TokenStatus:
    """What the proxy would do with the token now, in one word; revoked before expired before exhausted."""
    if not token.is_active:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    if token.max_requests is not None and token.request_count >= token.max_requests:
        return "exhausted"
    if token.max_tokens is not None and token.prompt_tokens + token.completion_tokens >= token.max_tokens:
        return "exhausted"
    if token.max_cost_usd is not None and token.cost_usd >= token.max_cost_usd:
        return "exhausted"
    return "active"


def token_out(token: Token, now: datetime | None = None) -> TokenOut:
    """The token as the API shows it, with its ``status`` at ``now`` (default: this instant)."""
    return TokenOut(
        id=token.id,
        token=token.token_hint,
        project_id=token.project_id,
        expires_at=token.expires_at,
        is_active=token.is_active,
        request_count=token.request_count,
        max_requests=token.max_requests,
        rate_limit_per_minute=token.rate_limit_per_minute,
        cache_hit_count=token.cache_hit_count,
        created_at=token.created_at,
        last_used_at=token.last_used_at,
        deactivated_at=token.deactivated_at,
        status=token_status(token, now or datetime.now(UTC)),
        name=token.name,
        metadata=token.metadata,
        max_tokens=token.max_tokens,
        max_cost_usd=token.max_cost_usd,
        tokens_per_minute=token.tokens_per_minute,
        allowed_models=token.allowed_models,
        prompt_tokens=token.prompt_tokens,
        completion_tokens=token.completion_tokens,
        cached_tokens=token.cached_tokens,
        cost_usd=token.cost_usd,
    )


def audit_event_out(record: AuditRecord) -> AuditEventOut:
    return msgspec.convert(msgspec.structs.asdict(record), AuditEventOut)


def audit_page(records: list[AuditRecord], total: int, page: int, page_size: int) -> AuditPage:
    return AuditPage(
        events=[audit_event_out(r) for r in records],
        page=page,
        page_size=page_size,
        total_count=total,
        total_pages=math.ceil(total / page_size),
    )
