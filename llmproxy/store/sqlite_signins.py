"""Admin sessions and failed management sign-ins on SQLite: shared by the processes of one host.

A mixin of ``SqliteStore``, apart so that the store's module stays about projects, tokens and audit.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import aiosqlite

from llmproxy.store.base import AdminSessionRecord
from llmproxy.store.rows import fixed_width_utc, utc

__all__ = ("SqliteSignIns",)


def _out(moment: datetime) -> str:
    return fixed_width_utc(utc(moment))


def _in(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


class SqliteSignIns:
    """The sign-in half of the Store protocol over the store's connection (``_session``)."""

    def _session(
        self, begin: str | None = None, *, migrated: bool = True
    ) -> contextlib.AbstractAsyncContextManager[aiosqlite.Connection]:
        raise NotImplementedError  # SqliteStore's

    async def create_admin_session(
        self, session: AdminSessionRecord, *, created_after: datetime, seen_after: datetime, keep: int
    ) -> None:
        async with self._session("IMMEDIATE") as db:
            await db.execute(
                "DELETE FROM admin_sessions WHERE created_at <= ?1 OR last_seen_at <= ?2",
                (_out(created_after), _out(seen_after)),
            )
            await db.execute(
                "DELETE FROM admin_sessions WHERE id_hash IN"
                " (SELECT id_hash FROM admin_sessions ORDER BY created_at DESC LIMIT -1 OFFSET ?1)",
                (max(keep - 1, 0),),
            )
            await db.execute(
                "INSERT INTO admin_sessions (id_hash, csrf_token, created_at, last_seen_at)"
                " VALUES (?1, ?2, ?3, ?4)",
                (
                    session.id_hash,
                    session.csrf_token,
                    _out(session.created_at),
                    _out(session.last_seen_at),
                ),
            )

    async def touch_admin_session(
        self, id_hash: str, now: datetime, *, created_after: datetime, seen_after: datetime
    ) -> AdminSessionRecord | None:
        async with self._session() as db:
            rows = await db.execute_fetchall(
                "UPDATE admin_sessions SET last_seen_at = ?2"
                " WHERE id_hash = ?1 AND created_at > ?3 AND last_seen_at > ?4"
                " RETURNING id_hash, csrf_token, created_at, last_seen_at",
                (id_hash, _out(now), _out(created_after), _out(seen_after)),
            )
        if not rows:
            return None
        row = rows[0]  # type: ignore[index]  # aiosqlite types its list as Iterable
        return AdminSessionRecord(
            id_hash=row["id_hash"],
            csrf_token=row["csrf_token"],
            created_at=_in(row["created_at"]),
            last_seen_at=_in(row["last_seen_at"]),
        )

    async def delete_admin_session(self, id_hash: str) -> None:
        async with self._session() as db:
            await db.execute("DELETE FROM admin_sessions WHERE id_hash = ?1", (id_hash,))

    async def record_auth_failure(self, client: str, at: datetime, after: datetime) -> list[datetime]:
        async with self._session("IMMEDIATE") as db:
            await db.execute("DELETE FROM auth_failures WHERE failed_at <= ?1", (_out(after),))
            await db.execute(
                "INSERT INTO auth_failures (client, failed_at) VALUES (?1, ?2)", (client, _out(at))
            )
            return await self._failures(db, client, after)

    async def auth_failures(self, client: str, after: datetime) -> list[datetime]:
        async with self._session() as db:
            return await self._failures(db, client, after)

    async def clear_auth_failures(self, client: str) -> None:
        async with self._session() as db:
            await db.execute("DELETE FROM auth_failures WHERE client = ?1", (client,))

    @staticmethod
    async def _failures(db: aiosqlite.Connection, client: str, after: datetime) -> list[datetime]:
        rows = await db.execute_fetchall(
            "SELECT failed_at FROM auth_failures WHERE client = ?1 AND failed_at > ?2 ORDER BY failed_at",
            (client, _out(after)),
        )
        return [_in(row[0]) for row in rows]
