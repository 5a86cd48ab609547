"""The shared store for several proxy instances: PostgreSQL through an asyncpg pool.

The pool replaces connections the server dropped, so the same object recovers by itself once the
database is back; until then every call raises StoreUnavailable naming the database (never the password).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from llmproxy.errors import StoreUnavailable
from llmproxy.store.base import AuditQuery, AuditRecord, Project, Token
from llmproxy.store.crypto import check_key
from llmproxy.store.migrate import load_migrations, pending_migrations
from llmproxy.store.postgres_signins import PostgresSignIns
from llmproxy.store.postgres_usage import PostgresUsage
from llmproxy.store.rows import (
    AUDIT_COLUMNS,
    PROJECT_COLUMNS,
    PROJECT_UPDATABLE,
    SELECT_PROJECTS,
    SELECT_TOKENS,
    TOKEN_COLUMNS,
    TOKEN_UPDATABLE,
    Dialect,
    audit_page_sql,
    in_utc,
    page_window,
    project_changes,
    utc,
)

__all__ = ("PostgresStore", "describe_dsn")

_DIALECT = Dialect(placeholder=lambda i: f"${i}", time_out=utc, time_in=utc, json_param="{}::jsonb")
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_MIGRATION_LOCK = 0x6C6C6D70  # "llmp": advisory lock class; the schema name is the second key
# Errors meaning "the database is not there right now", as opposed to a bug in a statement.
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.InternalClientError,  # e.g. the server's FATAL arrived on an idle connection before its EOF
)
_CONSTRAINT_FIELD = {
    "projects_name_key": "name",
    "tokens_token_hash_key": "token_hash",
    "tokens_project_id_fkey": "project_id",
    "audit_events_result_check": "result",
}


def describe_dsn(dsn: str) -> str:
    """``user@host:port/database`` for messages: the DSN without its password or query."""
    try:
        parts = urlsplit(dsn)
        user = f"{parts.username}@" if parts.username else ""
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "PostgreSQL"
    return f"{user}{host}{port}{parts.path}"


def _conflict(exc: asyncpg.IntegrityConstraintViolationError) -> ValueError:
    constraint = getattr(exc, "constraint_name", None) or ""
    column = getattr(exc, "column_name", None)
    return ValueError(_CONSTRAINT_FIELD.get(constraint) or column or constraint or "conflict")


class PostgresStore(PostgresSignIns, PostgresUsage):
    """Store on PostgreSQL; ``schema`` (created if missing) isolates one tenant or test run."""

    def __init__(
        self,
        dsn: str,
        encryption_key: bytes | None,
        *,
        schema: str | None = None,
        pool_size: int = 10,
        application_name: str = "llmproxy",
        connect_timeout: float = 10.0,
        command_timeout: float = 30.0,
    ) -> None:
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ValueError("schema")
        self.where = describe_dsn(dsn)
        self._dsn = dsn
        check_key(encryption_key)
        self._key = encryption_key
        self._schema = schema
        self._pool_size = pool_size
        self._application_name = application_name
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._migrate_lock = asyncio.Lock()
        self._migrated = False
        self._closed = False

    # -- lifecycle
    async def open(self) -> None:
        self._closed = False
        await self.migrate()

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        self._migrated = False
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=self._command_timeout)
            except TimeoutError:
                pool.terminate()

    async def ping(self) -> None:
        async with self._connection() as con:
            await con.fetchval("SELECT 1")

    async def migrate(self) -> list[str]:
        async with self._unavailable_on_error():
            return await self._apply_migrations(await self._ready_pool())

    async def _apply_migrations(self, pool: asyncpg.Pool, *, unless_done: bool = False) -> list[str]:
        async with self._migrate_lock:
            if unless_done and self._migrated:  # a concurrent first call of this instance did it
                return []
            async with pool.acquire(timeout=self._connect_timeout) as con, con.transaction():
                # Instances starting together queue here; the lock ends with the transaction.
                await con.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))", _MIGRATION_LOCK, self._schema or ""
                )
                if self._schema is not None:
                    await con.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
                await con.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations"
                    " (name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                applied = {row["name"] for row in await con.fetch("SELECT name FROM schema_migrations")}
                todo = pending_migrations(load_migrations("postgres"), applied)
                for migration in todo:
                    await con.execute(migration.sql)
                    await con.execute("INSERT INTO schema_migrations (name) VALUES ($1)", migration.name)
            self._migrated = True
            return [m.name for m in todo]

    async def _ready_pool(self) -> asyncpg.Pool:
        if self._closed:
            raise StoreUnavailable(f"PostgreSQL {self.where}: the store is closed")
        async with self._pool_lock:
            if self._pool is None:
                settings = {"application_name": self._application_name, "timezone": "UTC"}
                if self._schema is not None:
                    settings["search_path"] = self._schema
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=self._pool_size,
                    timeout=self._connect_timeout,
                    command_timeout=self._command_timeout,
                    server_settings=settings,
                )
            return self._pool

    @contextlib.asynccontextmanager
    async def _unavailable_on_error(self) -> AsyncIterator[None]:
        try:
            yield
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise _conflict(exc) from None
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL {self.where} unavailable: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy[asyncpg.Record]]:
        async with self._unavailable_on_error():
            pool = await self._ready_pool()
            if not self._migrated:
                await self._apply_migrations(pool, unless_done=True)
            async with pool.acquire(timeout=self._connect_timeout) as con:
                yield con

    # -- projects
    async def create_project(self, project: Project) -> Project:
        async with self._connection() as con:
            sql = _DIALECT.insert_sql("projects", PROJECT_COLUMNS)
            await con.execute(sql, *_DIALECT.project_params(project, self._key))
        return in_utc(project)

    async def get_project(self, project_id: str) -> Project | None:
        async with self._connection() as con:
            row = await con.fetchrow(f"{SELECT_PROJECTS} WHERE id = $1", project_id)
            return _DIALECT.project_from_row(row, self._key) if row else None

    async def list_projects(self) -> list[Project]:
        async with self._connection() as con:
            rows = await con.fetch(f"{SELECT_PROJECTS} ORDER BY created_at, id")
            return [_DIALECT.project_from_row(row, self._key) for row in rows]

    async def update_project(self, project_id: str, fields: dict[str, Any]) -> Project | None:
        if not fields:
            return await self.get_project(project_id)
        changes = project_changes(fields, self._key, datetime.now(UTC))
        sql, params = _DIALECT.update_sql("projects", changes, PROJECT_UPDATABLE, PROJECT_COLUMNS)
        async with self._connection() as con:
            row = await con.fetchrow(sql, *params, project_id)
            return _DIALECT.project_from_row(row, self._key) if row else None

    # -- tokens
    async def create_token(self, token: Token) -> Token:
        async with self._connection() as con:
            await con.execute(_DIALECT.insert_sql("tokens", TOKEN_COLUMNS), *_DIALECT.token_params(token))
        return in_utc(token)

    async def get_token(self, token_id: str) -> Token | None:
        async with self._connection() as con:
            row = await con.fetchrow(f"{SELECT_TOKENS} WHERE id = $1", token_id)
            return _DIALECT.token_from_row(row) if row else None

    async def get_token_by_hash(self, token_hash: str) -> Token | None:
        async with self._connection() as con:
            row = await con.fetchrow(f"{SELECT_TOKENS} WHERE token_hash = $1", token_hash)
            return _DIALECT.token_from_row(row) if row else None

    async def list_tokens(self, project_id: str | None = None, active_only: bool = False) -> list[Token]:
        clauses = ["project_id = $1"] if project_id is not None else []
        if active_only:
            clauses.append("is_active")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        params = (project_id,) if project_id is not None else ()
        async with self._connection() as con:
            rows = await con.fetch(f"{SELECT_TOKENS}{where} ORDER BY created_at, id", *params)
            return [_DIALECT.token_from_row(row) for row in rows]

    async def update_token(self, token_id: str, fields: dict[str, Any]) -> Token | None:
        if not fields:
            return await self.get_token(token_id)
        sql, params = _DIALECT.update_sql("tokens", fields, TOKEN_UPDATABLE, TOKEN_COLUMNS)
        async with self._connection() as con:
            row = await con.fetchrow(sql, *params, token_id)
            return _DIALECT.token_from_row(row) if row else None

    async def revoke_project_tokens(self, project_id: str, now: datetime) -> tuple[int, int, int]:
        # One statement, one snapshot: the total is counted from the same state the update started from.
        async with self._connection() as con:
            row = await con.fetchrow(
                "WITH revoked AS (UPDATE tokens SET is_active = FALSE, deactivated_at = $2"
                " WHERE project_id = $1 AND is_active RETURNING id)"
                " SELECT (SELECT count(*) FROM revoked) AS revoked,"
                " (SELECT count(*) FROM tokens WHERE project_id = $1) AS total",
                project_id,
                utc(now),
            )
        assert row is not None  # a SELECT without FROM returns one row
        revoked, total = int(row["revoked"]), int(row["total"])
        return revoked, total - revoked, total

    async def consume_request(self, token_id: str, now: datetime) -> bool:
        async with self._connection() as con:
            status = await con.execute(
                "UPDATE tokens SET request_count = request_count + 1, last_used_at = $2"
                " WHERE id = $1 AND is_active AND (max_requests IS NULL OR request_count < max_requests)",
                token_id,
                utc(now),
            )
        return status == "UPDATE 1"

    # -- audit
    async def insert_audit(self, records: list[AuditRecord]) -> None:
        if not records:
            return
        sql = _DIALECT.insert_sql("audit_events", AUDIT_COLUMNS)
        async with self._connection() as con, con.transaction():
            await con.executemany(sql, [_DIALECT.audit_params(record) for record in records])

    async def list_audit(self, query: AuditQuery) -> tuple[list[AuditRecord], int]:
        count_sql, page_sql, params = audit_page_sql(query, _DIALECT)
        limit, offset = page_window(query)
        async with self._connection() as con, con.transaction(isolation="repeatable_read", readonly=True):
            total = await con.fetchval(count_sql, *params)
            rows = await con.fetch(page_sql, *params, limit, offset)
        return [_DIALECT.audit_from_row(row) for row in rows], int(total)
