"""The management API's wire shapes: what it accepts (strict, decoded once) and what it answers.

Request Structs forbid unknown fields and carry their bounds as ``Meta`` constraints, so msgspec's
error names the offending field; response Structs never hold an upstream API key or a token hash.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from llmproxy.manage.checks import MAX_METADATA_BYTES, MAX_METADATA_DEPTH
from llmproxy.manage.decoding import PATTERN_MEANINGS, decode_body, decode_query, field_of

__all__ = (
    "MAX_BODY_BYTES",
    "AuditEventOut",
    "AuditFilter",
    "AuditPage",
    "CachePurgeQuery",
    "CachePurged",
    "MAX_METADATA_BYTES",
    "ErrorBody",
    "ProjectCreate",
    "ProjectOut",
    "ProjectUpdate",
    "RevokeResult",
    "TokenCreate",
    "TokenCreated",
    "TokenFilter",
    "TokenOut",
    "TokenStatus",
    "TokenUpdate",
    "decode_body",
    "decode_query",
    "field_of",
)

MAX_BODY_BYTES = 1024 * 1024
MAX_DURATION_MINUTES = 525_600  # one year

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
NAME_PATTERN = r"\S"
API_KEY_PATTERN = r"^\S+$"
URL_PATTERN = r"^https?://[^\s/]+\S*$"
CACHE_KEY_PATTERN = r":[0-9a-f]{64}$"  # a key ends in its SHA-256: it is a prefix of itself only
Uuid = Annotated[str, Meta(pattern=UUID_PATTERN, description="a UUID")]
Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=NAME_PATTERN, description="not blank")]
ApiKey = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=4096,
        pattern=API_KEY_PATTERN,
        description="the upstream API key (write-only)",
    ),
]
BaseUrl = Annotated[str, Meta(max_length=2048, pattern=URL_PATTERN, description="an http(s) URL")]
Positive = Annotated[int, Meta(ge=1, le=2**62)]
RateLimit = Annotated[int, Meta(ge=1, le=1_000_000)]
Minutes = Annotated[int, Meta(ge=1, le=MAX_DURATION_MINUTES)]
AwareTime = Annotated[datetime, Meta(tz=True, description="RFC 3339 with a UTC offset")]
PATTERN_MEANINGS.update(
    {
        CACHE_KEY_PATTERN: "a whole cache key, as X-PROXY-CACHE-KEY shows it",
        UUID_PATTERN: "a UUID",
        NAME_PATTERN: "a string that is not blank",
        API_KEY_PATTERN: "a string without whitespace",
        URL_PATTERN: "an http(s) URL",
    }
)
TokenStatus = Literal["active", "expired", "revoked", "exhausted"]
TokenBudget = Annotated[int, Meta(ge=1, le=2**62, description="prompt + completion tokens, lifetime")]
CostBudget = Annotated[float, Meta(ge=0, le=1e12, description="USD, lifetime")]
TokensPerMinute = Annotated[int, Meta(ge=1, le=2**40, description="prompt + completion tokens per minute")]
ModelPattern = Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^\S+$")]
AllowedModels = Annotated[
    list[ModelPattern],
    Meta(max_length=100, description="glob patterns (gpt-4o*, o3): the models the token may name"),
]
Metadata = Annotated[
    dict[str, Any],
    Meta(
        max_length=64,
        description=f"a JSON object of at most {MAX_METADATA_BYTES} bytes and {MAX_METADATA_DEPTH} levels "
        "of nesting, copied into events",
    ),
]


# --- requests ----------------------------------------------------------------------------------


class ProjectCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /manage/projects``."""

    name: Name
    api_key: ApiKey
    upstream_base_url: BaseUrl | None = None
    max_tokens: TokenBudget | None = None
    max_cost_usd: CostBudget | None = None
    tokens_per_minute: TokensPerMinute | None = None


class ProjectUpdate(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PATCH /manage/projects/{id}``: absent fields stay as they are; ``upstream_base_url:
    null`` clears the override; ``revoke_tokens`` requires ``is_active: false``."""

    name: Name | UnsetType = UNSET
    api_key: ApiKey | UnsetType = UNSET
    upstream_base_url: BaseUrl | None | UnsetType = UNSET
    is_active: bool | UnsetType = UNSET
    revoke_tokens: bool = False
    max_tokens: TokenBudget | None | UnsetType = UNSET
    max_cost_usd: CostBudget | None | UnsetType = UNSET
    tokens_per_minute: TokensPerMinute | None | UnsetType = UNSET


class TokenCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /manage/tokens``; absent limits mean unlimited, absent duration never expires."""

    project_id: Uuid
    duration_minutes: Minutes | None = None
    max_requests: Positive | None = None
    rate_limit_per_minute: RateLimit | None = None
    name: Name | None = None
    metadata: Metadata | None = None
    max_tokens: TokenBudget | None = None
    max_cost_usd: CostBudget | None = None
    tokens_per_minute: TokensPerMinute | None = None
    allowed_models: AllowedModels | None = None


class TokenUpdate(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PATCH /manage/tokens/{id}``: ``null`` removes a limit or the expiry."""

    is_active: bool | UnsetType = UNSET
    max_requests: Positive | None | UnsetType = UNSET
    rate_limit_per_minute: RateLimit | None | UnsetType = UNSET
    expires_at: AwareTime | None | UnsetType = UNSET
    name: Name | None | UnsetType = UNSET
    metadata: Metadata | None | UnsetType = UNSET
    max_tokens: TokenBudget | None | UnsetType = UNSET
    max_cost_usd: CostBudget | None | UnsetType = UNSET
    tokens_per_minute: TokensPerMinute | None | UnsetType = UNSET
    allowed_models: AllowedModels | None | UnsetType = UNSET


class TokenFilter(Struct, kw_only=True, forbid_unknown_fields=True):
    """Query of ``GET /manage/tokens``."""

    project_id: Uuid | None = None
    active_only: Annotated[
        bool, Meta(description="only tokens usable now: status active (not revoked, expired or exhausted)")
    ] = False


class AuditFilter(Struct, kw_only=True, forbid_unknown_fields=True):
    """Query of ``GET /manage/audit``: exact-match filters, an inclusive time window, paging."""

    action: str | None = None
    result: str | None = None
    project_id: str | None = None
    token_id: str | None = None
    request_id: str | None = None
    actor: str | None = None
    since: AwareTime | None = None
    until: AwareTime | None = None
    page: Annotated[int, Meta(ge=1, le=1_000_000)] = 1
    page_size: Annotated[int, Meta(ge=1, le=500)] = 50


class CachePurgeQuery(Struct, kw_only=True, forbid_unknown_fields=True):
    """Query of ``DELETE /manage/cache``: ``key`` (as X-PROXY-CACHE-KEY shows it) purges that entry,
    ``prefix`` every key starting with it (REDIS_CACHE_KEY_PREFIX optional); neither purges everything."""

    prefix: Annotated[str, Meta(min_length=1, max_length=1024)] | None = None
    key: Annotated[str, Meta(max_length=2048, pattern=CACHE_KEY_PATTERN)] | None = None

    def __post_init__(self) -> None:
        if self.key is not None and self.prefix is not None:
            raise ValueError("Give key or prefix, not both")


# --- responses ---------------------------------------------------------------------------------


class ProjectOut(Struct, kw_only=True):
    """A project as the API shows it: ``api_key`` obfuscated (``sk-…abcd``), never the key."""

    id: str
    name: str
    api_key: str
    upstream_base_url: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
    deactivated_at: datetime | None
    max_tokens: int | None
    max_cost_usd: float | None
    tokens_per_minute: int | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float


class TokenOut(Struct, kw_only=True):
    """A token as listings show it: ``token`` is a hint (``sk-abcd…wxyz``) to recognise it by,
    not the usable token, which is shown once at creation and never stored."""

    id: str
    token: str
    project_id: str
    expires_at: datetime | None
    is_active: bool
    request_count: int
    max_requests: int | None
    rate_limit_per_minute: int | None
    cache_hit_count: int
    created_at: datetime
    last_used_at: datetime | None
    deactivated_at: datetime | None
    status: Annotated[
        TokenStatus,
        Meta(
            description="revoked (is_active false), expired, exhausted (max_requests, max_tokens or "
            "max_cost_usd used up) or active"
        ),
    ]
    name: str | None
    metadata: dict[str, Any] | None
    max_tokens: int | None
    max_cost_usd: float | None
    tokens_per_minute: int | None
    allowed_models: list[str] | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float


class TokenCreated(Struct, kw_only=True):
    """Answer of ``POST /manage/tokens``: the only place the raw ``token`` ever appears."""

    id: str
    token: str
    token_hint: str
    project_id: str
    expires_at: datetime | None
    is_active: bool
    max_requests: int | None
    rate_limit_per_minute: int | None
    created_at: datetime
    name: str | None
    metadata: dict[str, Any] | None
    max_tokens: int | None
    max_cost_usd: float | None
    tokens_per_minute: int | None
    allowed_models: list[str] | None


class RevokeResult(Struct, kw_only=True):
    """Answer of ``POST /manage/projects/{id}/tokens/revoke``."""

    revoked_count: int
    already_revoked_count: int
    total_tokens: int


class CachePurged(Struct, kw_only=True):
    """Answer of ``DELETE /manage/cache``: how many cached responses were removed."""

    deleted: int


class AuditEventOut(Struct, kw_only=True):
    """One audit row (SPEC §10); every key is present, ``null`` when unknown."""

    id: str
    timestamp: datetime
    action: str
    result: str
    reason: str | None
    actor: str
    request_id: str | None
    project_id: str | None
    token_id: str | None
    client_ip: str | None
    user_agent: str | None
    method: str | None
    path: str | None
    details: dict[str, Any]


class AuditPage(Struct, kw_only=True):
    """Answer of ``GET /manage/audit``: one page, newest first."""

    events: list[AuditEventOut]
    page: int
    page_size: int
    total_count: int
    total_pages: int


class ErrorDetail(Struct, kw_only=True, omit_defaults=True):
    message: str
    type: str
    code: str
    param: str | None = None


class ErrorBody(Struct, kw_only=True):
    """Every error: ``{"error": {"message", "type", "code", "param"?}}``."""

    error: ErrorDetail
