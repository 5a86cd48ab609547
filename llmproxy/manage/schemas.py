"""The management API's wire shapes: what it accepts (strict, decoded once) and what it answers.

Request Structs forbid unknown fields and carry their bounds as ``Meta`` constraints, so msgspec's
error names the offending field; response Structs never hold an upstream API key or a token hash.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from llmproxy.errors import ProxyError, Refusal
from llmproxy.manage.checks import check_values
from llmproxy.store.base import AuditRecord, Project, Token

__all__ = (
    "MAX_BODY_BYTES",
    "AuditEventOut",
    "AuditFilter",
    "AuditPage",
    "CachePurgeQuery",
    "CachePurged",
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
    "audit_event_out",
    "audit_page",
    "decode_body",
    "decode_query",
    "field_of",
    "looks_obfuscated",
    "obfuscate_api_key",
    "project_out",
    "token_out",
    "token_status",
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
TokenStatus = Literal["active", "expired", "revoked", "exhausted"]


# --- requests ----------------------------------------------------------------------------------


class ProjectCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /manage/projects``."""

    name: Name
    api_key: ApiKey
    upstream_base_url: BaseUrl | None = None


class ProjectUpdate(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PATCH /manage/projects/{id}``: absent fields stay as they are; ``upstream_base_url:
    null`` clears the override; ``revoke_tokens`` requires ``is_active: false``."""

    name: Name | UnsetType = UNSET
    api_key: ApiKey | UnsetType = UNSET
    upstream_base_url: BaseUrl | None | UnsetType = UNSET
    is_active: bool | UnsetType = UNSET
    revoke_tokens: bool = False


class TokenCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /manage/tokens``; absent limits mean unlimited, absent duration never expires."""

    project_id: Uuid
    duration_minutes: Minutes | None = None
    max_requests: Positive | None = None
    rate_limit_per_minute: RateLimit | None = None


class TokenUpdate(Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PATCH /manage/tokens/{id}``: ``null`` removes a limit or the expiry."""

    is_active: bool | UnsetType = UNSET
    max_requests: Positive | None | UnsetType = UNSET
    rate_limit_per_minute: RateLimit | None | UnsetType = UNSET
    expires_at: AwareTime | None | UnsetType = UNSET


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
        Meta(description="revoked (is_active false), expired, exhausted (max_requests used) or active"),
    ]


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


# --- conversions -------------------------------------------------------------------------------


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
    )


def token_status(token: Token, now: datetime) -> TokenStatus:
    """What the proxy would do with the token now, in one word; revoked before expired before exhausted."""
    if not token.is_active:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    if token.max_requests is not None and token.request_count >= token.max_requests:
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


# --- decoding ----------------------------------------------------------------------------------

_FIELD_NAMED = re.compile(r"(?:unknown|required) field `([^`]+)`")
_AT_PATH = re.compile(r" - at `\$(.*)`$")
# msgspec quotes the regex a string failed; people would rather read what it stands for
_PATTERN_MEANINGS = {
    CACHE_KEY_PATTERN: "a whole cache key, as X-PROXY-CACHE-KEY shows it",
    UUID_PATTERN: "a UUID",
    NAME_PATTERN: "a string that is not blank",
    API_KEY_PATTERN: "a string without whitespace",
    URL_PATTERN: "an http(s) URL",
}
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}
T = TypeVar("T")


def field_of(error: msgspec.ValidationError) -> str | None:
    """The field a validation error is about, as a dotted path (``max_requests``, ``a.b[0]``)."""
    message = str(error)
    at = _AT_PATH.search(message)
    path = at.group(1).lstrip(".") if at else ""
    named = _FIELD_NAMED.search(message)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return path or None


def _invalid(error: msgspec.ValidationError) -> ProxyError:
    message = str(error)
    for pattern, meaning in _PATTERN_MEANINGS.items():
        message = message.replace(f"`str` matching regex {pattern!r}", meaning)
    return ProxyError(Refusal.INVALID_FIELD, message, param=field_of(error))


def decode_body(body: bytes, kind: type[T]) -> T:
    """Decode a request body: 400 ``invalid_json`` if it isn't JSON, 422 ``invalid_field`` naming
    the field if it doesn't fit ``kind``."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        # parse the whole text first: the typed decoder stops at the first field that does not fit,
        # and would call '{"a": 1}garbage' an unknown field instead of what it is, not JSON
        msgspec.json.decode(body)
        value: T = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProxyError(Refusal.INVALID_JSON, f"Request body is not valid JSON: {exc}") from None
    check_values(value)
    return value


def decode_query(query: Any, kind: type[T]) -> T:
    """Convert query parameters (first value of each) into ``kind``, strings coerced; 422 if not."""
    values = {key: query.get(key) for key in query.keys()}
    try:
        value = msgspec.convert(values, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    check_values(value)
    return value
