"""The admin session table on a fake clock (expiry, bounds, forgetting) and the sign-in form's CSRF token."""

from __future__ import annotations

from llmproxy.admin.login import LoginFormGuard
from llmproxy.admin.sessions import SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_is_found_by_its_cookie_value_and_has_its_own_csrf_token() -> None:
    sessions = SessionStore()
    first_id, first = sessions.create()
    second_id, second = sessions.create()
    assert sessions.get(first_id) is first and sessions.get(second_id) is second
    assert first.csrf_token != second.csrf_token and first_id != second_id
    assert sessions.get("made-up") is None and sessions.get(None) is None and sessions.get("") is None


def test_the_table_never_holds_the_cookie_value_itself() -> None:
    sessions = SessionStore()
    session_id, _ = sessions.create()
    assert session_id not in sessions._sessions  # keyed by a hash: a dump of the table opens nothing


def test_a_session_idle_too_long_is_over() -> None:
    clock = Clock()
    sessions = SessionStore(idle_ttl=60, absolute_ttl=3600, clock=clock)
    session_id, _ = sessions.create()
    clock.now += 59
    assert sessions.get(session_id) is not None  # and this use restarts the idle clock
    clock.now += 59
    assert sessions.get(session_id) is not None
    clock.now += 60
    assert sessions.get(session_id) is None
    assert len(sessions) == 0


def test_a_session_in_use_still_ends_at_its_absolute_lifetime() -> None:
    clock = Clock()
    sessions = SessionStore(idle_ttl=60, absolute_ttl=150, clock=clock)
    session_id, _ = sessions.create()
    for _ in range(2):
        clock.now += 50
        assert sessions.get(session_id) is not None
    clock.now += 50
    assert sessions.get(session_id) is None


def test_a_full_table_lets_the_oldest_session_go() -> None:
    sessions = SessionStore(max_sessions=2)
    oldest, _ = sessions.create()
    middle, _ = sessions.create()
    newest, _ = sessions.create()
    assert len(sessions) == 2
    assert sessions.get(oldest) is None
    assert sessions.get(middle) is not None and sessions.get(newest) is not None


def test_ending_a_session_forgets_it() -> None:
    sessions = SessionStore()
    session_id, _ = sessions.create()
    sessions.end(session_id)
    assert sessions.get(session_id) is None
    sessions.end(session_id)  # twice is fine
    sessions.end(None)


def test_the_form_token_is_valid_only_with_its_own_nonce_and_process_secret() -> None:
    guard = LoginFormGuard()
    nonce = guard.new_nonce()
    token = guard.form_token(nonce)
    assert guard.valid(nonce, token)
    assert not guard.valid(guard.new_nonce(), token)
    assert not guard.valid(nonce, token[:-1] + ("0" if token[-1] != "0" else "1"))
    assert not guard.valid(nonce, None) and not guard.valid(None, token)
    assert not LoginFormGuard().valid(nonce, token)  # another process (or a restart): another secret
