"""Admin sessions and failed management sign-ins on PostgreSQL: what every instance of a cluster shares.

A mixin of ``PostgresStore``, apart so that the store's module stays about projects, tokens and audit.
"""

from __future__ import annotations

import contextlib
from datetime import datetime

import asyncpg

from llmproxy.store.base import AdminSessionRecord
from llmproxy.store.rows import utc

__all__ = ("PostgresSignIns",)


class PostgresSignIns:
    """The sign-in half of the Store protocol over the store's pool (``_connection``)."""

    def _connection(
        self,
    ) -> contextlib.AbstractAsyncContextManager[asyncpg.pool.PoolConnectionProxy[asyncpg.Record]]:
        raise NotImplementedError  # PostgresStore's

    async def create_admin_session(
        self, session: AdminSessionRecord, *, created_after: datetime, seen_after: datetime, keep: int
    ) -> None:
        async with self._connection() as con, con.transaction():
            await con.execute(
                "DELETE FROM admin_sessions WHERE created_at <= $1 OR last_seen_at <= $2",
                utc(created_after),
                utc(seen_after),
            )
            await con.execute(
                "DELETE FROM admin_sessions WHERE id_hash IN"
                " (SELECT id_hash FROM admin_sessions ORDER BY created_at DESC OFFSET $1)",
                max(keep - 1, 0),
            )
            await con.execute(
                "INSERT INTO admin_sessions (id_hash, csrf_token, created_at, last_seen_at)"
                " VALUES ($1, $2, $3, $4)",
                session.id_hash,
                session.csrf_token,
                utc(session.created_at),
                utc(session.last_seen_at),
            )

    async def touch_admin_session(
        self, id_hash: str, now: datetime, *, created_after: datetime, seen_after: datetime
    ) -> AdminSessionRecord | None:
        async with self._connection() as con:
            row = await con.fetchrow(
                "UPDATE admin_sessions SET last_seen_at = $2"
                " WHERE id_hash = $1 AND created_at > $3 AND last_seen_at > $4"
                " RETURNING id_hash, csrf_token, created_at, last_seen_at",
                id_hash,
                utc(now),
                utc(created_after),
                utc(seen_after),
            )
        return AdminSessionRecord(**dict(row)) if row else None

    async def delete_admin_session(self, id_hash: str) -> None:
        async with self._connection() as con:
            await con.execute("DELETE FROM admin_sessions WHERE id_hash = $1", id_hash)

    async def record_auth_failure(self, client: str, at: datetime, after: datetime) -> list[datetime]:
        async with self._connection() as con, con.transaction():
            await con.execute("DELETE FROM auth_failures WHERE failed_at <= $1", utc(after))
            await con.execute(
                "INSERT INTO auth_failures (client, failed_at) VALUES ($1, $2)", client, utc(at)
            )
            return await self._failures(con, client, after)

    async def auth_failures(self, client: str, after: datetime) -> list[datetime]:
        async with self._connection() as con:
            return await self._failures(con, client, after)

    async def clear_auth_failures(self, client: str) -> None:
        async with self._connection() as con:
            await con.execute("DELETE FROM auth_failures WHERE client = $1", client)

    @staticmethod
    async def _failures(
        con: asyncpg.pool.PoolConnectionProxy[asyncpg.Record], client: str, after: datetime
    ) -> list[datetime]:
        rows = await con.fetch(
            "SELECT failed_at FROM auth_failures WHERE client = $1 AND failed_at > $2 ORDER BY failed_at",
            client,
            utc(after),
        )
        return [utc(row[0]) for row in rows]
