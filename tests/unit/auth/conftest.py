"""An in-memory Store double and a hand-driven clock for Authority unit tests."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import msgspec
import pytest

from llmproxy.auth.tokens import generate_token, hash_token, token_hint
from llmproxy.config import AuthSettings
from llmproxy.errors import StoreUnavailable
from llmproxy.store.base import (
    AuditQuery,
    AuditRecord,
    Project,
    SpendTotal,
    SpendTotals,
    Token,
    TokenUsage,
    UsageRow,
)

T0 = 1_700_000_000.0  # a fixed "now" for the clock


class Clock:
    """time.time stand-in that only moves when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def datetime(self, offset: float = 0.0) -> datetime:
        return datetime.fromtimestamp(self.now + offset, UTC)


def _total(holder: Token | Project) -> SpendTotal:
    return SpendTotal(holder.prompt_tokens + holder.completion_tokens, holder.cost_usd)


class MemoryStore:
    """Just enough of the Store protocol, in dicts; ``down`` makes every call raise StoreUnavailable."""

    def __init__(self) -> None:
        self.projects: dict[str, Project] = {}
        self.tokens: dict[str, Token] = {}
        self.audit: list[AuditRecord] = []
        self.usage_batches: list[list[TokenUsage]] = []
        self.usage_rows: list[UsageRow] = []
        self.down = False
        self.calls: dict[str, int] = {}

    def _call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.down:
            raise StoreUnavailable("memory store is down")

    # lifecycle
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        self._call("ping")

    async def migrate(self) -> list[str]:
        return []

    # projects
    async def create_project(self, project: Project) -> Project:
        self.projects[project.id] = project
        return project

    async def get_project(self, project_id: str) -> Project | None:
        self._call("get_project")
        return self.projects.get(project_id)

    async def list_projects(self) -> list[Project]:
        return list(self.projects.values())

    async def update_project(self, project_id: str, fields: dict[str, Any]) -> Project | None:
        project = self.projects.get(project_id)
        if project is None:
            return None
        self.projects[project_id] = msgspec.structs.replace(project, **fields)
        return self.projects[project_id]

    # tokens
    async def create_token(self, token: Token) -> Token:
        self.tokens[token.id] = token
        return token

    async def get_token(self, token_id: str) -> Token | None:
        self._call("get_token")
        return self.tokens.get(token_id)

    async def get_token_by_hash(self, token_hash: str) -> Token | None:
        self._call("get_token_by_hash")
        return next((t for t in self.tokens.values() if t.token_hash == token_hash), None)

    async def list_tokens(self, project_id: str | None = None, active_only: bool = False) -> list[Token]:
        return [
            t
            for t in self.tokens.values()
            if (project_id is None or t.project_id == project_id) and (t.is_active or not active_only)
        ]

    async def update_token(self, token_id: str, fields: dict[str, Any]) -> Token | None:
        token = self.tokens.get(token_id)
        if token is None:
            return None
        self.tokens[token_id] = msgspec.structs.replace(token, **fields)
        return self.tokens[token_id]

    async def revoke_project_tokens(self, project_id: str, now: datetime) -> tuple[int, int, int]:
        raise NotImplementedError

    async def consume_request(self, token_id: str, now: datetime) -> bool:
        self._call("consume_request")
        token = self.tokens.get(token_id)
        if token is None or not token.is_active:
            return False
        if token.max_requests is not None and token.request_count >= token.max_requests:
            return False
        token.request_count += 1
        token.last_used_at = now
        return True

    async def add_usage(
        self,
        usage: list[TokenUsage],
        rows: Sequence[UsageRow] = (),
        *,
        watch_tokens: Sequence[str] = (),
        watch_projects: Sequence[str] = (),
    ) -> SpendTotals:
        self._call("add_usage")
        self.usage_batches.append(usage)
        self.usage_rows.extend(rows)
        for item in usage:
            token = self.tokens[item.token_id]
            token.request_count += item.requests
            token.cache_hit_count += item.cache_hits
            token.last_used_at = item.last_used_at
        for row in rows:
            for holder in (self.tokens.get(row.token_id), self.projects.get(row.project_id)):
                if holder is not None:
                    holder.prompt_tokens += row.prompt_tokens
                    holder.completion_tokens += row.completion_tokens
                    holder.cached_tokens += row.cached_tokens
                    holder.cost_usd += row.cost_usd
        return SpendTotals(
            tokens={t: _total(self.tokens[t]) for t in watch_tokens if t in self.tokens},
            projects={p: _total(self.projects[p]) for p in watch_projects if p in self.projects},
        )

    async def delete_usage_before(self, day: date) -> int:
        return 0

    # audit
    async def insert_audit(self, records: list[AuditRecord]) -> None:
        self._call("insert_audit")
        self.audit.extend(records)

    async def list_audit(self, query: AuditQuery) -> tuple[list[AuditRecord], int]:
        return list(self.audit), len(self.audit)

    # helpers for tests
    def add_project(self, *, active: bool = True, api_key: str = "sk-upstream-key-0123456789") -> Project:
        now = datetime.now(UTC)
        project = Project(
            id=str(uuid.uuid4()),
            name=f"p-{uuid.uuid4().hex[:8]}",
            api_key=api_key,
            upstream_base_url="http://127.0.0.1:9/v1",
            is_active=active,
            created_at=now,
            updated_at=now,
        )
        self.projects[project.id] = project
        return project

    def add_token(self, project: Project, **fields: Any) -> tuple[str, Token]:
        raw = generate_token()
        token = Token(
            id=str(uuid.uuid4()),
            project_id=project.id,
            token_hash=hash_token(raw),
            token_hint=token_hint(raw),
            created_at=datetime.now(UTC),
            **fields,
        )
        self.tokens[token.id] = token
        return raw, token


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def settings() -> AuthSettings:
    return AuthSettings(key_cache_ttl=30.0, key_cache_max=100)
