"""Authority against an in-memory store: the refusal order, caching, invalidation, counting."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from llmproxy.auth.authority import Authority, Grant
from llmproxy.config import AuthSettings
from llmproxy.errors import ProxyError, Refusal


async def refusal(authority: Authority, raw: str) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        await authority.check(raw)
    return caught.value


@pytest.fixture
def authority(store, settings, clock) -> Authority:
    return Authority(store, settings, clock=clock)


async def test_a_valid_token_is_granted_its_project_key_upstream_and_limits(store, authority) -> None:
    project = store.add_project(api_key="sk-upstream-secret-0123456789")
    raw, token = store.add_token(project, max_requests=10, rate_limit_per_minute=60)
    grant = await authority.check(raw)
    assert msgspec.structs.replace(grant, window=None) == Grant(
        token_id=token.id,
        project_id=project.id,
        api_key="sk-upstream-secret-0123456789",
        upstream_base_url="http://127.0.0.1:9/v1",
        max_requests=10,
        rate_limit_per_minute=60,
        token_hint=token.token_hint,
    )


async def test_grant_repr_never_shows_the_upstream_key(store, authority) -> None:
    raw, _ = store.add_token(store.add_project(api_key="sk-upstream-secret-0123456789"))
    grant = await authority.check(raw)
    assert "sk-upstream" not in repr(grant) and "sk-upstream" not in str(grant)


async def test_unknown_token_is_refused_with_401_invalid_token(authority) -> None:
    error = await refusal(authority, "sk-" + "x" * 40)
    assert error.refusal is Refusal.INVALID_TOKEN
    assert error.refusal.status == 401


async def test_unknown_token_is_remembered_for_five_seconds(store, authority, clock) -> None:
    bad = "sk-" + "y" * 40
    for _ in range(20):
        await refusal(authority, bad)
    assert store.calls["get_token_by_hash"] == 1
    clock.advance(5.0)
    await refusal(authority, bad)
    assert store.calls["get_token_by_hash"] == 2


async def test_revoked_token_is_refused_with_401_token_revoked(store, authority) -> None:
    raw, _ = store.add_token(store.add_project(), is_active=False)
    error = await refusal(authority, raw)
    assert (error.refusal.status, error.refusal.code) == (401, "token_revoked")


async def test_expired_token_is_refused_with_401_token_expired(store, authority, clock) -> None:
    raw, _ = store.add_token(store.add_project(), expires_at=clock.datetime(-1))
    error = await refusal(authority, raw)
    assert (error.refusal.status, error.refusal.code) == (401, "token_expired")


async def test_token_expiring_exactly_now_is_expired(store, authority, clock) -> None:
    raw, _ = store.add_token(store.add_project(), expires_at=clock.datetime())
    assert (await refusal(authority, raw)).refusal is Refusal.TOKEN_EXPIRED


async def test_a_cached_token_expires_on_time_without_a_store_read(store, authority, clock) -> None:
    raw, _ = store.add_token(store.add_project(), expires_at=clock.datetime(10))
    await authority.check(raw)
    clock.advance(10)
    assert (await refusal(authority, raw)).refusal is Refusal.TOKEN_EXPIRED
    assert store.calls["get_token_by_hash"] == 1


async def test_revoked_wins_over_expired(store, authority, clock) -> None:
    raw, _ = store.add_token(store.add_project(), is_active=False, expires_at=clock.datetime(-1))
    assert (await refusal(authority, raw)).refusal is Refusal.TOKEN_REVOKED


async def test_expired_wins_over_inactive_project(store, authority, clock) -> None:
    raw, _ = store.add_token(store.add_project(active=False), expires_at=clock.datetime(-1))
    assert (await refusal(authority, raw)).refusal is Refusal.TOKEN_EXPIRED


async def test_token_of_an_inactive_project_is_refused_with_403_project_inactive(store, authority) -> None:
    raw, _ = store.add_token(store.add_project(active=False))
    error = await refusal(authority, raw)
    assert (error.refusal.status, error.refusal.code) == (403, "project_inactive")


async def test_token_whose_project_is_gone_is_refused_as_project_inactive(store, authority) -> None:
    project = store.add_project()
    raw, _ = store.add_token(project)
    del store.projects[project.id]
    assert (await refusal(authority, raw)).refusal is Refusal.PROJECT_INACTIVE


async def test_token_at_its_quota_is_refused_with_429_quota_exceeded(store, authority) -> None:
    raw, _ = store.add_token(store.add_project(), max_requests=2, request_count=2)
    error = await refusal(authority, raw)
    assert (error.refusal.status, error.refusal.code) == (429, "quota_exceeded")


async def test_quota_boundary_two_pass_and_the_third_is_refused(store, authority) -> None:
    raw, token = store.add_token(store.add_project(), max_requests=2)
    for _ in range(2):
        await authority.count_request(await authority.check(raw))
    error = await refusal(authority, raw)
    assert error.refusal is Refusal.QUOTA_EXCEEDED
    assert store.tokens[token.id].request_count == 2
    assert store.calls["consume_request"] == 2  # the third was refused from memory


async def test_quota_used_up_elsewhere_is_refused_when_counting_and_then_remembered(store, authority) -> None:
    raw, token = store.add_token(store.add_project(), max_requests=5)
    grant = await authority.check(raw)
    store.tokens[token.id].request_count = 5  # another proxy instance used the rest
    with pytest.raises(ProxyError) as caught:
        await authority.count_request(grant)
    assert caught.value.refusal is Refusal.QUOTA_EXCEEDED
    assert (await refusal(authority, raw)).refusal is Refusal.QUOTA_EXCEEDED
    assert store.calls["get_token_by_hash"] == 1


async def test_limited_token_revoked_elsewhere_is_refused_as_revoked_when_counting(store, authority) -> None:
    raw, token = store.add_token(store.add_project(), max_requests=5)
    grant = await authority.check(raw)
    store.tokens[token.id].is_active = False  # revoked through another instance
    with pytest.raises(ProxyError) as caught:
        await authority.count_request(grant)
    assert caught.value.refusal is Refusal.TOKEN_REVOKED
    assert (await refusal(authority, raw)).refusal is Refusal.TOKEN_REVOKED


async def test_rate_limit_refuses_with_429_and_retry_after(store, authority) -> None:
    raw, _ = store.add_token(store.add_project(), rate_limit_per_minute=2)
    await authority.check(raw)
    await authority.check(raw)
    error = await refusal(authority, raw)
    assert (error.refusal.status, error.refusal.code) == (429, "rate_limited")
    assert int(error.headers["Retry-After"]) >= 1


async def test_a_rate_limited_refusal_says_limit_remaining_and_reset_openai_style(
    store, authority, clock
) -> None:
    raw, _ = store.add_token(store.add_project(), rate_limit_per_minute=2)
    await authority.check(raw)
    clock.advance(20)
    await authority.check(raw)
    clock.advance(10)
    error = await refusal(authority, raw)
    assert error.headers == {
        "Retry-After": "30",
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "30s",
    }


async def test_an_allowed_limited_token_carries_its_window_and_an_unlimited_one_none(
    store, authority
) -> None:
    limited, _ = store.add_token(store.add_project(), rate_limit_per_minute=5)
    unlimited, _ = store.add_token(store.add_project())
    window = (await authority.check(limited)).window
    assert window is not None and (window.limit, window.remaining) == (5, 4)
    assert (await authority.check(unlimited)).window is None


async def test_refusals_of_a_known_token_name_its_project_and_token(store, authority, clock) -> None:
    project = store.add_project()
    expired, expired_token = store.add_token(project, expires_at=clock.datetime(-1))
    exhausted, exhausted_token = store.add_token(project, max_requests=1, request_count=1)
    revoked, revoked_token = store.add_token(project, is_active=False)
    for raw, token in ((expired, expired_token), (exhausted, exhausted_token), (revoked, revoked_token)):
        error = await refusal(authority, raw)
        assert (error.project_id, error.token_id) == (project.id, token.id)


async def test_rate_limit_lets_requests_through_again_after_retry_after(store, authority, clock) -> None:
    raw, _ = store.add_token(store.add_project(), rate_limit_per_minute=1)
    await authority.check(raw)
    error = await refusal(authority, raw)
    clock.advance(int(error.headers["Retry-After"]))
    await authority.check(raw)


async def test_quota_is_checked_before_the_rate_limit(store, authority) -> None:
    raw, _ = store.add_token(store.add_project(), max_requests=1, request_count=1, rate_limit_per_minute=1)
    for _ in range(3):
        assert (await refusal(authority, raw)).refusal is Refusal.QUOTA_EXCEEDED


async def test_a_cached_check_does_not_read_the_store(store, authority) -> None:
    raw, _ = store.add_token(store.add_project())
    for _ in range(50):
        await authority.check(raw)
    assert store.calls == {"get_token_by_hash": 1, "get_project": 1}


async def test_the_cache_is_reread_after_its_ttl(store, authority, clock) -> None:
    project = store.add_project()
    raw, token = store.add_token(project)
    await authority.check(raw)
    store.tokens[token.id].is_active = False
    clock.advance(29)
    await authority.check(raw)  # still cached
    clock.advance(1)
    assert (await refusal(authority, raw)).refusal is Refusal.TOKEN_REVOKED


async def test_invalidate_token_makes_a_revocation_effective_at_once(store, authority) -> None:
    raw, token = store.add_token(store.add_project())
    await authority.check(raw)
    store.tokens[token.id].is_active = False
    authority.invalidate_token(token.id)
    assert (await refusal(authority, raw)).refusal is Refusal.TOKEN_REVOKED


async def test_invalidate_token_makes_a_reactivation_effective_at_once(store, authority) -> None:
    raw, token = store.add_token(store.add_project(), is_active=False)
    await refusal(authority, raw)
    store.tokens[token.id].is_active = True
    authority.invalidate_token(token.id)
    await authority.check(raw)


async def test_invalidate_project_refuses_all_its_tokens_at_once(store, authority) -> None:
    project, other = store.add_project(), store.add_project()
    raws = [store.add_token(project)[0] for _ in range(3)]
    other_raw, _ = store.add_token(other)
    for raw in [*raws, other_raw]:
        await authority.check(raw)
    store.projects[project.id] = msgspec.structs.replace(project, is_active=False)
    authority.invalidate_project(project.id)
    for raw in raws:
        assert (await refusal(authority, raw)).refusal is Refusal.PROJECT_INACTIVE
    await authority.check(other_raw)
    assert store.calls["get_token_by_hash"] == 4 + 3  # the other project's token stayed cached


async def test_invalidate_project_makes_a_new_upstream_key_effective_at_once(store, authority) -> None:
    project = store.add_project(api_key="sk-old-key-0123456789")
    raw, _ = store.add_token(project)
    await authority.check(raw)
    store.projects[project.id] = msgspec.structs.replace(project, api_key="sk-new-key-0123456789")
    authority.invalidate_project(project.id)
    assert (await authority.check(raw)).api_key == "sk-new-key-0123456789"


async def test_store_down_on_a_miss_answers_503_service_unavailable(store, authority) -> None:
    raw, _ = store.add_token(store.add_project())
    store.down = True
    error = await refusal(authority, raw)
    assert (error.refusal.status, error.refusal.code) == (503, "service_unavailable")


async def test_store_down_is_never_answered_with_401(store, authority) -> None:
    store.down = True
    assert (await refusal(authority, "sk-" + "z" * 40)).refusal.status == 503


async def test_store_down_is_not_cached(store, authority) -> None:
    raw, _ = store.add_token(store.add_project())
    store.down = True
    await refusal(authority, raw)
    store.down = False
    await authority.check(raw)


async def test_store_down_while_counting_a_limited_token_answers_503(store, authority) -> None:
    raw, _ = store.add_token(store.add_project(), max_requests=5)
    grant = await authority.check(raw)
    store.down = True
    with pytest.raises(ProxyError) as caught:
        await authority.count_request(grant)
    assert caught.value.refusal is Refusal.SERVICE_UNAVAILABLE


async def test_concurrent_misses_for_one_token_read_the_store_once(store, authority) -> None:
    raw, _ = store.add_token(store.add_project())
    grants = await asyncio.gather(*(authority.check(raw) for _ in range(20)))
    assert len({g.token_id for g in grants}) == 1
    assert store.calls["get_token_by_hash"] == 1


async def test_a_read_begun_before_an_invalidation_is_not_cached(store, authority) -> None:
    raw, token = store.add_token(store.add_project())
    reading, gate = asyncio.Event(), asyncio.Event()
    read = store.get_token_by_hash

    async def slow_read(token_hash: str):
        found = msgspec.structs.replace(await read(token_hash))  # a snapshot, as a database row is
        reading.set()
        await gate.wait()
        return found

    store.get_token_by_hash = slow_read
    first = asyncio.ensure_future(authority.check(raw))
    await reading.wait()
    store.tokens[token.id].is_active = False  # revoked while the read is in flight...
    authority.invalidate_token(token.id)
    gate.set()
    assert (await first).token_id == token.id  # ...so this answer is stale, but must not stay cached
    assert (await refusal(authority, raw)).refusal is Refusal.TOKEN_REVOKED


async def test_the_cache_never_holds_more_than_key_cache_max_tokens(store, clock) -> None:
    authority = Authority(store, AuthSettings(key_cache_ttl=30, key_cache_max=3), clock=clock)
    project = store.add_project()
    raws = [store.add_token(project)[0] for _ in range(4)]
    for raw in raws:
        await authority.check(raw)
    await authority.check(raws[0])  # evicted by the fourth: read again
    assert store.calls["get_token_by_hash"] == 5
    await authority.check(raws[3])  # still cached
    assert store.calls["get_token_by_hash"] == 5


async def test_a_zero_ttl_disables_the_cache(store, clock) -> None:
    authority = Authority(store, AuthSettings(key_cache_ttl=0, key_cache_max=100), clock=clock)
    raw, _ = store.add_token(store.add_project())
    await authority.check(raw)
    await authority.check(raw)
    assert store.calls["get_token_by_hash"] == 2


async def test_unlimited_token_requests_are_batched_not_written_per_request(store, authority, clock) -> None:
    raw, token = store.add_token(store.add_project())
    grant = await authority.check(raw)
    for _ in range(3):
        await authority.count_request(grant)
    assert "consume_request" not in store.calls and "add_usage" not in store.calls
    await authority.flush()
    saved = store.tokens[token.id]
    assert (saved.request_count, saved.cache_hit_count) == (3, 0)
    assert saved.last_used_at == clock.datetime()


async def test_cache_hits_are_counted_apart_from_requests(store, authority) -> None:
    raw, token = store.add_token(store.add_project(), max_requests=10)
    grant = await authority.check(raw)
    authority.count_cache_hit(grant)
    authority.count_cache_hit(grant)
    await authority.flush()
    assert (store.tokens[token.id].request_count, store.tokens[token.id].cache_hit_count) == (0, 2)


async def test_usage_survives_a_failed_flush(store, authority) -> None:
    raw, token = store.add_token(store.add_project())
    grant = await authority.check(raw)
    await authority.count_request(grant)
    store.down = True
    await authority.flush()  # fails quietly, keeps the count
    await authority.count_request(grant)
    store.down = False
    await authority.flush()
    assert store.tokens[token.id].request_count == 2
    await authority.flush()  # nothing left to write twice
    assert store.tokens[token.id].request_count == 2


async def test_flush_with_nothing_pending_writes_nothing(store, authority) -> None:
    await authority.flush()
    assert "add_usage" not in store.calls


async def test_run_flushes_usage_in_the_background(store, authority) -> None:
    raw, token = store.add_token(store.add_project())
    await authority.count_request(await authority.check(raw))
    task = asyncio.ensure_future(authority.run())
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while store.tokens[token.id].request_count == 0:
            assert asyncio.get_running_loop().time() < deadline, "usage not flushed within 5 s"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert store.tokens[token.id].request_count == 1


async def test_run_survives_a_store_outage(store, authority) -> None:
    raw, token = store.add_token(store.add_project())
    await authority.count_request(await authority.check(raw))
    store.down = True
    task = asyncio.ensure_future(authority.run())
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while store.calls.get("add_usage", 0) < 2:  # it failed and tried again
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        store.down = False
        while store.tokens[token.id].request_count == 0:
            assert asyncio.get_running_loop().time() < deadline + 5
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert store.tokens[token.id].request_count == 1


async def test_a_flush_cancelled_mid_write_is_finished_by_the_next_flush(store, authority) -> None:
    raw, token = store.add_token(store.add_project())
    grant = await authority.check(raw)
    writing, gate = asyncio.Event(), asyncio.Event()
    write = store.add_usage

    async def slow_write(usage, *args, **kwargs):
        writing.set()
        await gate.wait()
        return await write(usage, *args, **kwargs)

    store.add_usage = slow_write
    await authority.count_request(grant)
    interrupted = asyncio.ensure_future(authority.flush())
    await writing.wait()
    interrupted.cancel()  # as at shutdown: the background loop is cancelled mid-write
    await asyncio.gather(interrupted, return_exceptions=True)
    await authority.count_request(grant)
    gate.set()
    await authority.flush()
    assert store.tokens[token.id].request_count == 2
