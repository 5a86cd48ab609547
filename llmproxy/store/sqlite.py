"""The embedded store: one aiosqlite connection (its own thread), WAL, foreign keys on.

Every use of the connection holds one asyncio lock, so a transaction never interleaves with another
coroutine's statements on the shared connection; SQLite serialises writers anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiosqlite

from llmproxy.errors import StoreUnavailable
from llmproxy.filemodes import PRIVATE, PRIVATE_DIR, create_file, make_dirs, warn_if_exposed
from llmproxy.store.base import AuditQuery, AuditRecord, Project, Token
from llmproxy.store.crypto import check_key
from llmproxy.store.migrate import load_migrations, pending_migrations, split_statements
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
    fixed_width_utc,
    in_utc,
    page_window,
    project_changes,
    utc,
)
from llmproxy.store.sqlite_signins import SqliteSignIns
from llmproxy.store.sqlite_usage import SqliteUsage

__all__ = ("SqliteStore",)

_DIALECT = Dialect(placeholder=lambda i: f"?{i}", time_out=fixed_width_utc, time_in=datetime.fromisoformat)
_CONSTRAINT_COLUMN = re.compile(r"constraint failed: (?:\w+\.)?(\w+)")


def _conflict(exc: sqlite3.IntegrityError) -> ValueError:
    """ValueError naming the offending field, as the Store protocol promises (e.g. 'name')."""
    message = str(exc)
    if "FOREIGN KEY" in message:
        return ValueError("project_id")
    found = _CONSTRAINT_COLUMN.search(message)
    return ValueError(found.group(1) if found else message)


async def _enable_wal(db: aiosqlite.Connection, attempts: int = 50) -> None:
    """Switch the file to WAL. The switch needs an exclusive lock and SQLite reports a busy file at once
    instead of waiting (busy_timeout does not apply), so two processes opening a new file retry a while."""
    for attempt in range(attempts):
        try:
            await db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.1)


class SqliteStore(SqliteSignIns, SqliteUsage):
    """Store on a SQLite file; the file and its directory are created on open."""

    def __init__(self, path: str, encryption_key: bytes | None) -> None:
        self.path = path
        check_key(encryption_key)
        self._key = encryption_key
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._migrated = False
        self._closed = False
        self._checked = False  # for readable files, once

    # -- lifecycle
    async def open(self) -> None:
        self._closed = False
        await self.migrate()

    async def close(self) -> None:
        self._closed = True
        async with self._lock:
            db, self._db = self._db, None
            self._migrated = False
            if db is not None:
                await db.close()

    async def ping(self) -> None:
        async with self._session() as db:
            await db.execute_fetchall("SELECT 1")

    async def migrate(self) -> list[str]:
        async with self._session(migrated=False) as db:
            return await self._apply_migrations(db)

    async def _apply_migrations(self, db: aiosqlite.Connection) -> list[str]:
        # BEGIN IMMEDIATE takes the write lock, so two processes opening one file migrate one at a time.
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            applied = {row[0] for row in await db.execute_fetchall("SELECT name FROM schema_migrations")}
            todo = pending_migrations(load_migrations("sqlite"), applied)
            for migration in todo:
                for statement in split_statements(migration.sql):
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (?1, ?2)",
                    (migration.name, _DIALECT.time_out(datetime.now(UTC))),
                )
            await db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await db.rollback()
            raise
        self._migrated = True
        return [m.name for m in todo]

    async def _connection(self) -> aiosqlite.Connection:
        if self._closed:
            raise StoreUnavailable(f"SQLite database {self.path} is closed")
        if self._db is None:
            if self.path != ":memory:":
                await asyncio.to_thread(self._prepare_file)
            # isolation_level=None: no implicit transactions; this class says BEGIN and COMMIT itself.
            db = await aiosqlite.connect(self.path, isolation_level=None)
            try:
                db.row_factory = aiosqlite.Row
                await db.execute("PRAGMA busy_timeout = 5000")
                await _enable_wal(db)
                await db.execute("PRAGMA foreign_keys = ON")
                await db.execute("PRAGMA synchronous = NORMAL")
            except BaseException:
                await db.close()
                raise
            self._db = db
        return self._db

    def _prepare_file(self) -> None:
        """The directory (0700) and the file (0600) before SQLite makes them 0755/0644; its WAL and SHM
        files take the database's mode. Existing ones that others may read are warned about, once."""
        make_dirs(os.path.dirname(self.path), PRIVATE_DIR)
        if not self._checked:
            self._checked = True
            for path in (self.path, f"{self.path}-wal", f"{self.path}-shm"):
                warn_if_exposed(path, PRIVATE)
        os.close(create_file(self.path, PRIVATE, os.O_RDONLY))

    @contextlib.asynccontextmanager
    async def _session(
        self, begin: str | None = None, *, migrated: bool = True
    ) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, alone, inside ``BEGIN <begin>`` … ``COMMIT`` when ``begin`` is given;
        driver errors become StoreUnavailable, constraint violations ValueError(field)."""
        try:
            async with self._lock:
                db = await self._connection()
                if migrated and not self._migrated:
                    await self._apply_migrations(db)
                if begin is None:
                    yield db
                    return
                await db.execute(f"BEGIN {begin}")
                try:
                    yield db
                    await db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        await db.rollback()
                    raise
        except sqlite3.IntegrityError as exc:
            raise _conflict(exc) from None
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"SQLite database {self.path} unavailable: {exc}") from exc

    # -- projects
    async def create_project(self, project: Project) -> Project:
        async with self._session("IMMEDIATE") as db:
            sql = _DIALECT.insert_sql("projects", PROJECT_COLUMNS)
            await db.execute(sql, _DIALECT.project_params(project, self._key))
        return in_utc(project)

    async def get_project(self, project_id: str) -> Project | None:
        async with self._session() as db:
            rows = await db.execute_fetchall(f"{SELECT_PROJECTS} WHERE id = ?1", (project_id,))
            return _DIALECT.project_from_row(rows[0], self._key) if rows else None  # type: ignore[index]  # aiosqlite types its list as Iterable

    async def list_projects(self) -> list[Project]:
        async with self._session() as db:
            rows = await db.execute_fetchall(f"{SELECT_PROJECTS} ORDER BY created_at, id")
            return [_DIALECT.project_from_row(row, self._key) for row in rows]

    async def update_project(self, project_id: str, fields: dict[str, Any]) -> Project | None:
        if not fields:
            return await self.get_project(project_id)
        changes = project_changes(fields, self._key, datetime.now(UTC))
        sql, params = _DIALECT.update_sql("projects", changes, PROJECT_UPDATABLE, PROJECT_COLUMNS)
        async with self._session("IMMEDIATE") as db:
            rows = await db.execute_fetchall(sql, (*params, project_id))
            return _DIALECT.project_from_row(rows[0], self._key) if rows else None  # type: ignore[index]  # aiosqlite types its list as Iterable

    # -- tokens
    async def create_token(self, token: Token) -> Token:
        async with self._session("IMMEDIATE") as db:
            await db.execute(_DIALECT.insert_sql("tokens", TOKEN_COLUMNS), _DIALECT.token_params(token))
        return in_utc(token)

    async def get_token(self, token_id: str) -> Token | None:
        return await self._one_token("id", token_id)

    async def get_token_by_hash(self, token_hash: str) -> Token | None:
        return await self._one_token("token_hash", token_hash)

    async def _one_token(self, column: str, value: str) -> Token | None:
        assert column in ("id", "token_hash")
        async with self._session() as db:
            rows = await db.execute_fetchall(f"{SELECT_TOKENS} WHERE {column} = ?1", (value,))
            return _DIALECT.token_from_row(rows[0]) if rows else None  # type: ignore[index]  # aiosqlite types its list as Iterable

    async def list_tokens(self, project_id: str | None = None, active_only: bool = False) -> list[Token]:
        clauses = ["project_id = ?1"] if project_id is not None else []
        if active_only:
            clauses.append("is_active")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        params = (project_id,) if project_id is not None else ()
        async with self._session() as db:
            rows = await db.execute_fetchall(f"{SELECT_TOKENS}{where} ORDER BY created_at, id", params)
            return [_DIALECT.token_from_row(row) for row in rows]

    async def update_token(self, token_id: str, fields: dict[str, Any]) -> Token | None:
        if not fields:
            return await self.get_token(token_id)
        sql, params = _DIALECT.update_sql("tokens", fields, TOKEN_UPDATABLE, TOKEN_COLUMNS)
        async with self._session("IMMEDIATE") as db:
            rows = await db.execute_fetchall(sql, (*params, token_id))
            return _DIALECT.token_from_row(rows[0]) if rows else None  # type: ignore[index]  # aiosqlite types its list as Iterable

    async def revoke_project_tokens(self, project_id: str, now: datetime) -> tuple[int, int, int]:
        async with self._session("IMMEDIATE") as db:
            async with db.execute(
                "UPDATE tokens SET is_active = 0, deactivated_at = ?2 WHERE project_id = ?1 AND is_active",
                (project_id, _DIALECT.time_out(utc(now))),
            ) as cursor:
                revoked = cursor.rowcount
            rows = await db.execute_fetchall(
                "SELECT count(*) FROM tokens WHERE project_id = ?1", (project_id,)
            )
        total = int(rows[0][0])  # type: ignore[index]  # aiosqlite types its list as Iterable
        return revoked, total - revoked, total

    async def consume_request(self, token_id: str, now: datetime) -> bool:
        async with self._session() as db:
            async with db.execute(
                "UPDATE tokens SET request_count = request_count + 1, last_used_at = ?2"
                " WHERE id = ?1 AND is_active AND (max_requests IS NULL OR request_count < max_requests)",
                (token_id, _DIALECT.time_out(utc(now))),
            ) as cursor:
                return cursor.rowcount == 1

    # -- audit
    async def insert_audit(self, records: list[AuditRecord]) -> None:
        if not records:
            return
        sql = _DIALECT.insert_sql("audit_events", AUDIT_COLUMNS)
        async with self._session("IMMEDIATE") as db:
            await db.executemany(sql, [_DIALECT.audit_params(record) for record in records])

    async def list_audit(self, query: AuditQuery) -> tuple[list[AuditRecord], int]:
        count_sql, page_sql, params = audit_page_sql(query, _DIALECT)
        limit, offset = page_window(query)
        async with self._session("DEFERRED") as db:  # one snapshot for the count and the page
            total = (await db.execute_fetchall(count_sql, params))[0][0]  # type: ignore[index]  # aiosqlite types its list as Iterable
            rows = await db.execute_fetchall(page_sql, (*params, limit, offset))
            return [_DIALECT.audit_from_row(row) for row in rows], int(total)
