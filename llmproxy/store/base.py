"""The Store protocol: projects, tokens, audit rows and admin sign-ins, whatever database holds them.

Implementations (``sqlite.py``, ``postgres.py``) raise ``llmproxy.errors.StoreUnavailable`` when the
database cannot be reached, so callers can answer 503 without knowing the driver.
Times are timezone-aware UTC ``datetime``s. ``api_key`` in a ``Project`` is always plaintext here;
encryption at rest happens inside the implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any, Literal, Protocol

import msgspec

__all__ = (
    "AdminSessionRecord",
    "AuditQuery",
    "AuditRecord",
    "Project",
    "Store",
    "SpendTotal",
    "SpendTotals",
    "Token",
    "TokenUsage",
    "UsageGroup",
    "UsageQuery",
    "UsageRow",
)


class Project(msgspec.Struct, kw_only=True):
    id: str
    name: str
    api_key: str
    upstream_base_url: str | None = None
    is_active: bool = True
    created_at: datetime
    updated_at: datetime
    deactivated_at: datetime | None = None
    # limits (None: none) and lifetime usage, added to by every instance's flush
    max_tokens: int | None = None  # prompt + completion tokens
    max_cost_usd: float | None = None
    tokens_per_minute: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0


class Token(msgspec.Struct, kw_only=True):
    id: str
    project_id: str
    token_hash: str  # hex SHA-256 of the raw token; the raw token is never stored
    token_hint: str  # "sk-abcd…wxyz": enough to recognise a token, useless to use it
    expires_at: datetime | None = None
    is_active: bool = True
    max_requests: int | None = None
    request_count: int = 0
    rate_limit_per_minute: int | None = None
    cache_hit_count: int = 0
    created_at: datetime
    last_used_at: datetime | None = None
    deactivated_at: datetime | None = None
    name: str | None = None
    metadata: dict[str, Any] | None = None  # small JSON object, copied into events
    max_tokens: int | None = None  # prompt + completion tokens
    max_cost_usd: float | None = None
    tokens_per_minute: int | None = None
    allowed_models: list[str] | None = None  # glob patterns; None: any model
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0


class TokenUsage(msgspec.Struct):
    """Counters to add to one token, flushed in batches off the hot path."""

    token_id: str
    requests: int = 0
    cache_hits: int = 0
    last_used_at: datetime | None = None


class UsageRow(msgspec.Struct, kw_only=True):
    """Usage to add to one (day, project, token, model): a daily row, and the token's and project's totals."""

    day: date  # UTC
    project_id: str
    token_id: str
    model: str = ""  # "" when the request named none
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_requests: int = 0
    estimated_requests: int = 0


class SpendTotal(msgspec.Struct, frozen=True):
    """A token's or project's lifetime usage as the database holds it (every instance's flushes)."""

    tokens: int  # prompt + completion
    cost_usd: float


class SpendTotals(msgspec.Struct):
    """What ``add_usage`` read back, in the same transaction, of the tokens and projects it was asked to watch."""

    tokens: dict[str, SpendTotal] = {}
    projects: dict[str, SpendTotal] = {}


UsageGrouping = Literal["day", "model", "token", "project"]


class UsageQuery(msgspec.Struct, kw_only=True):
    """Filters of GET /manage/usage: exact ids and model, an inclusive range of UTC days, one grouping."""

    project_id: str | None = None
    token_id: str | None = None
    model: str | None = None
    since: date | None = None
    until: date | None = None
    group_by: UsageGrouping = "day"


class UsageGroup(msgspec.Struct, kw_only=True):
    """One group's sums; ``key`` is the day (YYYY-MM-DD), model, token id or project id grouped by."""

    key: str
    project_id: str | None = None  # grouped by token: the token's project
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_requests: int = 0
    estimated_requests: int = 0


class AuditRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One audit row (SPEC §10). ``details`` must never hold a secret."""

    id: str = ""
    timestamp: datetime
    action: str
    result: str  # success | denied | error
    reason: str | None = None
    actor: str = "system"
    request_id: str | None = None
    project_id: str | None = None
    token_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    method: str | None = None
    path: str | None = None
    details: dict[str, Any] = {}


class AdminSessionRecord(msgspec.Struct, kw_only=True):
    """One signed-in admin browser, found by the SHA-256 of its cookie value (never the value itself)."""

    id_hash: str
    csrf_token: str
    created_at: datetime
    last_seen_at: datetime


class AuditQuery(msgspec.Struct, kw_only=True):
    action: str | None = None
    result: str | None = None
    project_id: str | None = None
    token_id: str | None = None
    request_id: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    page: int = 1
    page_size: int = 50


class Store(Protocol):
    """Persistence for projects, tokens and audit rows. Every method may raise StoreUnavailable."""

    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""

    async def migrate(self) -> list[str]:
        """Apply pending migrations; return the names applied."""

    # projects
    async def create_project(self, project: Project) -> Project:
        """Insert; raise ValueError('name') if the name is taken."""

    async def get_project(self, project_id: str) -> Project | None: ...

    async def list_projects(self) -> list[Project]: ...

    async def update_project(self, project_id: str, fields: dict[str, Any]) -> Project | None:
        """Set the given columns (name, api_key, upstream_base_url, is_active, deactivated_at,
        updated_at); None if unknown. ValueError('name') if the new name is taken."""

    # tokens
    async def create_token(self, token: Token) -> Token: ...

    async def get_token(self, token_id: str) -> Token | None: ...

    async def get_token_by_hash(self, token_hash: str) -> Token | None: ...

    async def list_tokens(self, project_id: str | None = None, active_only: bool = False) -> list[Token]: ...

    async def update_token(self, token_id: str, fields: dict[str, Any]) -> Token | None:
        """Set the given columns (is_active, deactivated_at, max_requests, rate_limit_per_minute,
        expires_at, name, metadata, max_tokens, max_cost_usd, tokens_per_minute, allowed_models);
        None if unknown."""

    async def revoke_project_tokens(self, project_id: str, now: datetime) -> tuple[int, int, int]:
        """Deactivate every active token of the project in one transaction:
        (revoked_count, already_revoked_count, total_tokens)."""

    async def consume_request(self, token_id: str, now: datetime) -> bool:
        """Atomically count one request for a token with ``max_requests``: True if it was under the
        quota (and is now counted), False if the quota is used up."""

    async def add_usage(
        self,
        usage: list[TokenUsage],
        rows: Sequence[UsageRow] = (),
        *,
        watch_tokens: Sequence[str] = (),
        watch_projects: Sequence[str] = (),
    ) -> SpendTotals:
        """In one transaction: add batched counters (requests of unlimited tokens, cache hits,
        last_used_at) and usage rows (daily rows, token and project totals, by increments), then read
        back the totals of the watched tokens and projects."""

    async def usage_report(self, query: UsageQuery) -> list[UsageGroup]:
        """The daily rows matching ``query``, summed per group, ordered by key."""

    async def delete_usage_before(self, day: date) -> int:
        """Forget the daily rows older than ``day`` (retention); the number of rows deleted."""

    # audit
    async def insert_audit(self, records: list[AuditRecord]) -> None: ...

    async def list_audit(self, query: AuditQuery) -> tuple[list[AuditRecord], int]:
        """Rows newest first, one page, and the total count matching the filters."""

    # admin sessions and failed management sign-ins: shared by every instance on the database
    async def create_admin_session(
        self, session: AdminSessionRecord, *, created_after: datetime, seen_after: datetime, keep: int
    ) -> None:
        """Insert ``session`` after forgetting the expired ones (created or last seen before the bounds)
        and all but the newest ``keep - 1``."""

    async def touch_admin_session(
        self, id_hash: str, now: datetime, *, created_after: datetime, seen_after: datetime
    ) -> AdminSessionRecord | None:
        """The session if it is still live, now last seen at ``now``; None if unknown or expired."""

    async def delete_admin_session(self, id_hash: str) -> None: ...

    async def record_auth_failure(self, client: str, at: datetime, after: datetime) -> list[datetime]:
        """Count a failure of ``client`` at ``at`` and forget everyone's failures up to ``after``; return
        this client's failures later than ``after``, oldest first."""

    async def auth_failures(self, client: str, after: datetime) -> list[datetime]:
        """The client's failures later than ``after``, oldest first."""

    async def clear_auth_failures(self, client: str) -> None: ...
