"""Admin UI sessions, kept on the server: the cookie holds a random id, never the management token.

Sessions live in this process's memory, keyed by a hash of their id (a dump of the table reveals no
usable cookie). Each has its own CSRF token, an absolute lifetime and an idle timeout; the table is
bounded, the oldest session giving way when it is full. A restart signs everybody out.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ("AdminSession", "SessionStore")

ABSOLUTE_TTL = 8 * 3600.0
IDLE_TTL = 30 * 60.0
MAX_SESSIONS = 1000


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(slots=True)
class AdminSession:
    """One signed-in browser: its CSRF token and when it started and was last seen (monotonic s)."""

    csrf_token: str
    created_at: float
    last_seen: float


class SessionStore:
    """Creates, finds and ends admin sessions; expired ones are forgotten when met or when room is needed."""

    def __init__(
        self,
        *,
        absolute_ttl: float = ABSOLUTE_TTL,
        idle_ttl: float = IDLE_TTL,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._absolute_ttl = absolute_ttl
        self._idle_ttl = idle_ttl
        self._max = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, AdminSession] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self) -> tuple[str, AdminSession]:
        """A new session: (the id to put in the cookie, the session)."""
        now = self._clock()
        self._forget_expired(now)
        while len(self._sessions) >= self._max:
            self._sessions.popitem(last=False)
        session_id = secrets.token_urlsafe(32)
        session = AdminSession(csrf_token=secrets.token_urlsafe(32), created_at=now, last_seen=now)
        self._sessions[_key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> AdminSession | None:
        """The live session for a cookie value, its idle clock restarted; None if unknown or expired."""
        if not session_id:
            return None
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._sessions[key]
            return None
        session.last_seen = now
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(_key(session_id), None)

    def _expired(self, session: AdminSession, now: float) -> bool:
        return now - session.created_at >= self._absolute_ttl or now - session.last_seen >= self._idle_ttl

    def _forget_expired(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[key]
