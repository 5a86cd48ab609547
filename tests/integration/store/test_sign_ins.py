"""Admin sessions and the sign-in throttle kept in the store (SQLite and PostgreSQL), on a fake wall clock:
expiry, bounds, hashing, and two stores on one database (two instances) seeing the same state."""

from __future__ import annotations

import hashlib

from llmproxy.admin.sessions import SessionStore
from llmproxy.auth.throttle import SharedAuthThrottle
from tests.integration.store.conftest import Backend


class Clock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_session_is_found_by_its_cookie_value_and_has_its_own_csrf_token(backend: Backend) -> None:
    sessions = SessionStore(await backend.opened())
    first_id, first = await sessions.create()
    second_id, second = await sessions.create()
    found = await sessions.get(first_id)
    assert found is not None and found.csrf_token == first.csrf_token
    found = await sessions.get(second_id)
    assert found is not None and found.csrf_token == second.csrf_token
    assert first.csrf_token != second.csrf_token and first_id != second_id
    for unknown in ("made-up", None, "", "x" * 10_000):
        assert await sessions.get(unknown) is None


async def test_the_table_holds_the_hash_of_the_cookie_value_never_the_value(backend: Backend) -> None:
    sessions = SessionStore(await backend.opened())
    session_id, _ = await sessions.create()
    rows = await backend.fetch_raw("SELECT * FROM admin_sessions")
    assert len(rows) == 1
    assert hashlib.sha256(session_id.encode()).hexdigest() in rows[0]
    assert not any(session_id in str(value) for value in rows[0])


async def test_a_session_idle_too_long_is_over(backend: Backend) -> None:
    clock = Clock()
    sessions = SessionStore(await backend.opened(), idle_ttl=60, absolute_ttl=3600, clock=clock)
    session_id, _ = await sessions.create()
    clock.now += 59
    assert await sessions.get(session_id) is not None  # and this use restarts the idle clock
    clock.now += 59
    assert await sessions.get(session_id) is not None
    clock.now += 60
    assert await sessions.get(session_id) is None


async def test_a_session_in_use_still_ends_at_its_absolute_lifetime(backend: Backend) -> None:
    clock = Clock()
    sessions = SessionStore(await backend.opened(), idle_ttl=60, absolute_ttl=150, clock=clock)
    session_id, _ = await sessions.create()
    for _ in range(2):
        clock.now += 50
        assert await sessions.get(session_id) is not None
    clock.now += 50
    assert await sessions.get(session_id) is None


async def test_expired_sessions_are_deleted_and_a_full_table_lets_the_oldest_go(backend: Backend) -> None:
    clock = Clock()
    sessions = SessionStore(await backend.opened(), idle_ttl=60, max_sessions=2, clock=clock)
    await sessions.create()
    clock.now += 61
    oldest, _ = await sessions.create()  # the first, expired, is deleted now
    clock.now += 1
    middle, _ = await sessions.create()
    clock.now += 1
    newest, _ = await sessions.create()
    assert len(await backend.fetch_raw("SELECT id_hash FROM admin_sessions")) == 2
    assert await sessions.get(oldest) is None
    assert await sessions.get(middle) is not None and await sessions.get(newest) is not None


async def test_ending_a_session_on_one_instance_ends_it_for_every_instance(backend: Backend) -> None:
    one, other = SessionStore(await backend.opened()), SessionStore(await backend.opened())
    session_id, _ = await one.create()
    assert await other.get(session_id) is not None
    await other.end(session_id)
    assert await one.get(session_id) is None
    await one.end(session_id)  # twice is fine
    await one.end(None)


async def test_failures_counted_by_two_instances_lock_the_address_with_an_exact_wait(
    backend: Backend,
) -> None:
    clock = Clock()
    one = SharedAuthThrottle(await backend.opened(), clock=clock)
    other = SharedAuthThrottle(await backend.opened(), clock=clock)
    for n in range(4):
        assert await (one if n % 2 else other).failed("10.0.0.1") is None
        clock.now += 1
    assert await one.retry_after("10.0.0.1") is None
    assert await other.failed("10.0.0.1") == 56  # the fifth locks it: until the first leaves the window
    assert await one.retry_after("10.0.0.1") == 56
    assert await one.retry_after("10.0.0.2") is None  # others are not held back
    clock.now += 55.5
    assert await other.retry_after("10.0.0.1") == 1  # rounded up, never 0
    clock.now += 0.5
    assert await one.retry_after("10.0.0.1") is None


async def test_a_success_on_one_instance_clears_the_address_for_all(backend: Backend) -> None:
    one = SharedAuthThrottle(await backend.opened(), max_failures=2)
    other = SharedAuthThrottle(await backend.opened(), max_failures=2)
    await one.failed("2001:db8:1:2::1")
    await other.succeeded("2001:db8:1:2::abcd")  # the same /64
    await one.failed("2001:db8:1:2::1")
    assert await other.retry_after("2001:db8:1:2::1") is None


async def test_failures_older_than_the_window_are_deleted(backend: Backend) -> None:
    clock = Clock()
    throttle = SharedAuthThrottle(await backend.opened(), clock=clock)
    for n in range(3):
        await throttle.failed(f"10.0.1.{n}")
    clock.now += 61
    await throttle.failed("10.0.2.1")
    assert len(await backend.fetch_raw("SELECT client FROM auth_failures")) == 1


async def test_the_throttle_fails_open_to_its_own_count_while_the_store_is_down(backend: Backend) -> None:
    store = await backend.opened()
    throttle = SharedAuthThrottle(store, max_failures=3)
    await throttle.failed("10.0.0.9")
    await store.close()  # every call now raises StoreUnavailable
    assert await throttle.retry_after("10.0.0.9") is None
    assert await throttle.failed("10.0.0.9") is None
    assert await throttle.failed("10.0.0.9") is not None  # this instance's count: three failures
    assert await throttle.retry_after("10.0.0.9") is not None
    await throttle.succeeded("10.0.0.9")
    assert await throttle.retry_after("10.0.0.9") is None
