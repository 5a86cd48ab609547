"""What both SQL stores share: column lists, the update allow-lists, row ↔ struct conversion, filters.

A ``Dialect`` carries the little that differs (placeholder style, how a timestamp is bound and read),
so each store keeps only its connection handling and the statements that really differ.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import msgspec

from llmproxy.store.base import AuditQuery, AuditRecord, Project, Token, TokenUsage
from llmproxy.store.crypto import decrypt_api_key, encrypt_api_key

__all__ = (
    "AUDIT_COLUMNS",
    "PROJECT_COLUMNS",
    "PROJECT_UPDATABLE",
    "SELECT_PROJECTS",
    "SELECT_TOKENS",
    "TOKEN_COLUMNS",
    "TOKEN_UPDATABLE",
    "Dialect",
    "Row",
    "audit_filters",
    "fixed_width_utc",
    "audit_page_sql",
    "in_utc",
    "merge_usage",
    "page_window",
    "project_changes",
    "stored_api_key",
    "utc",
)

PROJECT_COLUMNS = (
    "id",
    "name",
    "api_key",
    "upstream_base_url",
    "is_active",
    "created_at",
    "updated_at",
    "deactivated_at",
    "max_tokens",
    "max_cost_usd",
    "tokens_per_minute",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
)
TOKEN_COLUMNS = (
    "id",
    "project_id",
    "token_hash",
    "token_hint",
    "expires_at",
    "is_active",
    "max_requests",
    "request_count",
    "rate_limit_per_minute",
    "cache_hit_count",
    "created_at",
    "last_used_at",
    "deactivated_at",
    "name",
    "metadata",
    "max_tokens",
    "max_cost_usd",
    "tokens_per_minute",
    "allowed_models",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
)
AUDIT_COLUMNS = (
    "id",
    "timestamp",
    "action",
    "result",
    "reason",
    "actor",
    "request_id",
    "project_id",
    "token_id",
    "client_ip",
    "user_agent",
    "method",
    "path",
    "details",
)
SELECT_PROJECTS = f"SELECT {', '.join(PROJECT_COLUMNS)} FROM projects"
SELECT_TOKENS = f"SELECT {', '.join(TOKEN_COLUMNS)} FROM tokens"
# The only column names that ever reach an UPDATE's SET clause: keys come from this list, never from input.
LIMITS = frozenset({"max_tokens", "max_cost_usd", "tokens_per_minute"})  # of tokens and projects
PROJECT_UPDATABLE = frozenset(
    {"name", "api_key", "upstream_base_url", "is_active", "deactivated_at", "updated_at", *LIMITS}
)
TOKEN_UPDATABLE = frozenset(
    {
        "is_active",
        "deactivated_at",
        "max_requests",
        "rate_limit_per_minute",
        "expires_at",
        "name",
        "metadata",
        "allowed_models",
        *LIMITS,
    }
)
_TIME_COLUMNS = frozenset(
    {"created_at", "updated_at", "deactivated_at", "expires_at", "last_used_at", "timestamp"}
)
_JSON_COLUMNS = frozenset({"details", "metadata", "allowed_models"})  # written as JSON text
_ENCODED_HERE = frozenset({"metadata", "allowed_models"})  # (audit_params encodes details itself)
_MAX_PAGE_SIZE = 1000
S = TypeVar("S", Project, Token, AuditRecord)
_json_encode = msgspec.json.encode
_json_decode = msgspec.json.Decoder(dict[str, Any]).decode
_json_any = msgspec.json.Decoder().decode


def fixed_width_utc(moment: datetime) -> str:
    """SQLite's timestamp text, "0001-02-03T04:05:06.000007Z": one width, so comparing the text compares the
    instants (strftime's %Y alone writes year 1 as "1", which neither compares nor parses back)."""
    return f"{moment.year:04d}{moment.strftime('-%m-%dT%H:%M:%S.%fZ')}"


def utc(moment: datetime) -> datetime:
    """The same instant as an aware UTC datetime; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


class Row(Protocol):
    """A fetched row as both drivers give it (sqlite3.Row, asyncpg.Record): values by column name."""

    def __getitem__(self, column: str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one database spells parameters and timestamps."""

    placeholder: Callable[[int], str]  # 1-based position -> "?1" or "$1"
    time_out: Callable[[datetime], Any]  # aware UTC datetime -> bound value
    time_in: Callable[[Any], datetime]  # stored value -> aware UTC datetime
    json_param: str = "{}"  # how a JSON text parameter is written, e.g. "{}::jsonb"

    def insert_sql(self, table: str, columns: tuple[str, ...]) -> str:
        marks = [
            self.json_param.format(self.placeholder(i)) if column in _JSON_COLUMNS else self.placeholder(i)
            for i, column in enumerate(columns, 1)
        ]
        return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(marks)})"

    def bind(self, column: str, value: Any) -> Any:
        if value is not None:
            if column in _TIME_COLUMNS:
                return self.time_out(utc(value))
            if column in _ENCODED_HERE:
                return _json_encode(value).decode()
        return value

    def _time(self, value: Any) -> datetime | None:
        return None if value is None else utc(self.time_in(value))

    # -- projects
    def project_params(self, project: Project, key: bytes | None) -> list[Any]:
        values = msgspec.structs.asdict(project)
        values["api_key"] = stored_api_key(key, project.api_key)
        return [self.bind(c, values[c]) for c in PROJECT_COLUMNS]

    def project_from_row(self, row: Row, key: bytes | None) -> Project:
        return Project(
            id=row["id"],
            name=row["name"],
            api_key=decrypt_api_key(key, row["api_key"]),
            upstream_base_url=row["upstream_base_url"],
            is_active=bool(row["is_active"]),
            created_at=utc(self.time_in(row["created_at"])),  # NOT NULL
            updated_at=utc(self.time_in(row["updated_at"])),  # NOT NULL
            deactivated_at=self._time(row["deactivated_at"]),
            max_tokens=row["max_tokens"],
            max_cost_usd=row["max_cost_usd"],
            tokens_per_minute=row["tokens_per_minute"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            cached_tokens=row["cached_tokens"],
            cost_usd=row["cost_usd"],
        )

    # -- tokens
    def token_params(self, token: Token) -> list[Any]:
        values = msgspec.structs.asdict(token)
        return [self.bind(c, values[c]) for c in TOKEN_COLUMNS]

    def token_from_row(self, row: Row) -> Token:
        values = {c: row[c] for c in TOKEN_COLUMNS}
        for column in _TIME_COLUMNS.intersection(values):
            values[column] = self._time(values[column])
        values["is_active"] = bool(values["is_active"])
        for column in _ENCODED_HERE:
            if values[column] is not None:
                values[column] = _json_any(values[column])
        return Token(**values)

    # -- audit
    def audit_params(self, record: AuditRecord) -> list[Any]:
        values = msgspec.structs.asdict(record)
        values["id"] = record.id or uuid.uuid4().hex
        values["details"] = _json_encode(record.details).decode()
        return [self.bind(c, values[c]) for c in AUDIT_COLUMNS]

    def audit_from_row(self, row: Row) -> AuditRecord:
        values = {c: row[c] for c in AUDIT_COLUMNS}
        values["timestamp"] = self._time(values["timestamp"])
        details = values["details"]
        values["details"] = _json_decode(details) if details else {}
        return AuditRecord(**values)

    # -- updates
    def update_sql(
        self, table: str, fields: Mapping[str, Any], allowed: frozenset[str], returning: Iterable[str]
    ) -> tuple[str, list[Any]]:
        """``UPDATE table SET … WHERE id = <last param> RETURNING …``; TypeError on a column not allowed."""
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise TypeError(f"{table}: not an updatable column: {', '.join(map(repr, unknown))}")
        columns = sorted(fields)
        assignments = ", ".join(f"{c} = {self.placeholder(i)}" for i, c in enumerate(columns, 1))
        params = [self.bind(c, fields[c]) for c in columns]
        where = self.placeholder(len(columns) + 1)
        sql = f"UPDATE {table} SET {assignments} WHERE id = {where} RETURNING {', '.join(returning)}"
        return sql, params


def stored_api_key(key: bytes | None, plaintext: str) -> str:
    """What goes into the ``api_key`` column: ciphertext when a key is configured."""
    return plaintext if key is None else encrypt_api_key(key, plaintext)


def project_changes(fields: Mapping[str, Any], key: bytes | None, now: datetime) -> dict[str, Any]:
    """The columns an update of a project writes: ``updated_at`` moves unless given, the key is sealed."""
    changes = dict(fields)
    changes.setdefault("updated_at", now)
    if changes.get("api_key") is not None:
        changes["api_key"] = stored_api_key(key, changes["api_key"])
    return changes


def in_utc(record: S) -> S:
    """The struct with every datetime as aware UTC: what reading it back from either database gives."""
    changes = {k: utc(v) for k, v in msgspec.structs.asdict(record).items() if isinstance(v, datetime)}
    return msgspec.structs.replace(record, **changes)


def audit_page_sql(query: AuditQuery, dialect: Dialect) -> tuple[str, str, list[Any]]:
    """(count SQL, page SQL, filter parameters); the page SQL takes limit and offset as two more."""
    where, params = audit_filters(query, dialect)
    count_sql = f"SELECT count(*) FROM audit_events{where}"
    limit, offset = dialect.placeholder(len(params) + 1), dialect.placeholder(len(params) + 2)
    page_sql = (
        f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_events{where}"
        f" ORDER BY timestamp DESC, id DESC LIMIT {limit} OFFSET {offset}"
    )
    return count_sql, page_sql, params


def audit_filters(query: AuditQuery, dialect: Dialect) -> tuple[str, list[Any]]:
    """`` WHERE …`` (or "") and its parameters; since/until compare real timestamps, both inclusive."""
    clauses: list[str] = []
    params: list[Any] = []

    def add(condition: str, value: Any) -> None:
        params.append(value)
        clauses.append(condition.format(dialect.placeholder(len(params))))

    for column in ("action", "result", "project_id", "token_id", "request_id", "actor"):
        value = getattr(query, column)
        if value is not None:
            add(f"{column} = {{}}", value)
    if query.since is not None:
        add("timestamp >= {}", dialect.bind("timestamp", query.since))
    if query.until is not None:
        add("timestamp <= {}", dialect.bind("timestamp", query.until))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def page_window(query: AuditQuery) -> tuple[int, int]:
    """(limit, offset) for the query's page; out-of-range page numbers and sizes are clamped."""
    size = min(max(query.page_size, 1), _MAX_PAGE_SIZE)
    page = max(query.page, 1)
    return size, (page - 1) * size


def merge_usage(usage: Iterable[TokenUsage]) -> list[TokenUsage]:
    """One entry per token (summed counters, latest last_used_at), ordered by id so that concurrent
    batches lock rows in the same order and cannot deadlock."""
    merged: dict[str, TokenUsage] = {}
    for item in usage:
        used = None if item.last_used_at is None else utc(item.last_used_at)
        seen = merged.get(item.token_id)
        if seen is None:
            merged[item.token_id] = TokenUsage(item.token_id, item.requests, item.cache_hits, used)
            continue
        seen.requests += item.requests
        seen.cache_hits += item.cache_hits
        if used is not None and (seen.last_used_at is None or used > seen.last_used_at):
            seen.last_used_at = used
    return [merged[k] for k in sorted(merged)]
