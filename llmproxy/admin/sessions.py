"""Admin UI sessions, kept in the database: the cookie holds a random id, never the management token.

Every instance sharing the database sees the same sessions, so behind a load balancer a browser stays
signed in whichever instance answers, and a sign-out on one ends the session on all. Rows are keyed by
the SHA-256 of the id (a dump of the table reveals no usable cookie). Each session has its own CSRF
token, an absolute lifetime and an idle timeout; the table is bounded, the oldest giving way.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from llmproxy.store.base import AdminSessionRecord, Store

__all__ = ("AdminSession", "SessionStore", "session_key")

ABSOLUTE_TTL = 8 * 3600.0
IDLE_TTL = 30 * 60.0
MAX_SESSIONS = 1000

AdminSession = AdminSessionRecord  # what a page needs of a session: its csrf_token


def session_key(session_id: str) -> str:
    """What the database holds for a cookie value: its SHA-256, hex."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()


class SessionStore:
    """Creates, finds and ends admin sessions in the shared store; StoreUnavailable when it is down.

    ``clock`` gives wall-clock seconds (instances on several hosts compare them): tests move it.
    """

    def __init__(
        self,
        store: Store,
        *,
        absolute_ttl: float = ABSOLUTE_TTL,
        idle_ttl: float = IDLE_TTL,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._absolute_ttl = timedelta(seconds=absolute_ttl)
        self._idle_ttl = timedelta(seconds=idle_ttl)
        self._max = max_sessions
        self._clock = clock

    async def create(self) -> tuple[str, AdminSession]:
        """A new session: (the id to put in the cookie, the session); expired ones are forgotten first."""
        now = self._now()
        session_id = secrets.token_urlsafe(32)
        session = AdminSessionRecord(
            id_hash=session_key(session_id),
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            last_seen_at=now,
        )
        await self._store.create_admin_session(
            session,
            created_after=now - self._absolute_ttl,
            seen_after=now - self._idle_ttl,
            keep=self._max,
        )
        return session_id, session

    async def get(self, session_id: str | None) -> AdminSession | None:
        """The live session for a cookie value, its idle clock restarted; None if unknown or expired."""
        if not session_id or len(session_id) > 256:
            return None
        now = self._now()
        return await self._store.touch_admin_session(
            session_key(session_id),
            now,
            created_after=now - self._absolute_ttl,
            seen_after=now - self._idle_ttl,
        )

    async def end(self, session_id: str | None) -> None:
        """Forget the session on every instance (sign-out)."""
        if session_id:
            await self._store.delete_admin_session(session_key(session_id))

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)
