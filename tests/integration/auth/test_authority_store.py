"""Authority on real stores (SQLite file and PostgreSQL): quota, revocation, usage, outages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from llmproxy.auth.authority import Authority
from llmproxy.config import AuthSettings
from llmproxy.errors import ProxyError, Refusal
from llmproxy.store.postgres import PostgresStore
from llmproxy.store.sqlite import SqliteStore

SETTINGS = AuthSettings(key_cache_ttl=30.0, key_cache_max=1000)


async def refusal_of(authority: Authority, raw: str) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        await authority.check(raw)
    return caught.value


async def forward(authority: Authority, raw: str) -> None:
    """What the proxy does for a request it forwards: check, then count."""
    await authority.count_request(await authority.check(raw))


async def test_quota_of_two_lets_two_through_and_refuses_the_third_with_429(
    store, add_project, add_token
) -> None:
    raw, token = await add_token(await add_project(), max_requests=2)
    authority = Authority(store, SETTINGS)
    await forward(authority, raw)
    await forward(authority, raw)
    error = await refusal_of(authority, raw)
    assert (error.refusal.status, error.refusal.code) == (429, "quota_exceeded")
    assert (await store.get_token(token.id)).request_count == 2


async def test_two_instances_share_one_quota_through_the_database(store, add_project, add_token) -> None:
    raw, token = await add_token(await add_project(), max_requests=3)
    first, second = Authority(store, SETTINGS), Authority(store, SETTINGS)
    grants = [await first.check(raw), await second.check(raw)]  # both cache the token at count 0
    outcomes = []
    for i in range(5):
        try:
            await (first, second)[i % 2].count_request(grants[i % 2])
            outcomes.append("ok")
        except ProxyError as exc:
            outcomes.append(exc.refusal.code)
    assert outcomes == ["ok", "ok", "ok", "quota_exceeded", "quota_exceeded"]
    assert (await store.get_token(token.id)).request_count == 3
    assert (await refusal_of(first, raw)).refusal is Refusal.QUOTA_EXCEEDED


async def test_revocation_takes_effect_at_once_after_invalidate_token(store, add_project, add_token) -> None:
    raw, token = await add_token(await add_project())
    authority = Authority(store, SETTINGS)
    await authority.check(raw)
    now = datetime.now(UTC)
    await store.update_token(token.id, {"is_active": False, "deactivated_at": now})
    authority.invalidate_token(token.id)
    error = await refusal_of(authority, raw)
    assert (error.refusal.status, error.refusal.code) == (401, "token_revoked")


async def test_limited_token_revoked_by_another_instance_is_refused_on_its_next_request(
    store, add_project, add_token
) -> None:
    raw, token = await add_token(await add_project(), max_requests=100)
    authority = Authority(store, SETTINGS)
    grant = await authority.check(raw)
    await store.update_token(token.id, {"is_active": False})  # no invalidation reaches this instance
    with pytest.raises(ProxyError) as caught:
        await authority.count_request(grant)
    assert caught.value.refusal is Refusal.TOKEN_REVOKED
    assert (await store.get_token(token.id)).request_count == 0


async def test_deactivating_the_project_takes_effect_at_once_after_invalidate_project(
    store, add_project, add_token
) -> None:
    project = await add_project()
    raw, _ = await add_token(project)
    authority = Authority(store, SETTINGS)
    await authority.check(raw)
    await store.update_project(project.id, {"is_active": False, "deactivated_at": datetime.now(UTC)})
    authority.invalidate_project(project.id)
    error = await refusal_of(authority, raw)
    assert (error.refusal.status, error.refusal.code) == (403, "project_inactive")


async def test_expired_token_is_refused_with_401(store, add_project, add_token) -> None:
    raw, _ = await add_token(await add_project(), expires_at=datetime.now(UTC) - timedelta(seconds=1))
    error = await refusal_of(Authority(store, SETTINGS), raw)
    assert (error.refusal.status, error.refusal.code) == (401, "token_expired")


async def test_unknown_token_is_refused_with_401_invalid_token(store) -> None:
    error = await refusal_of(Authority(store, SETTINGS), "sk-" + "u" * 43)
    assert (error.refusal.status, error.refusal.code) == (401, "invalid_token")


async def test_grant_carries_the_decrypted_upstream_key(store, add_project, add_token) -> None:
    project = await add_project(
        api_key="sk-upstream-plaintext-0123456789", upstream_base_url="http://127.0.0.1:9"
    )
    raw, token = await add_token(project, rate_limit_per_minute=5)
    grant = await Authority(store, SETTINGS).check(raw)
    assert (grant.token_id, grant.project_id) == (token.id, project.id)
    assert (grant.api_key, grant.upstream_base_url) == (
        "sk-upstream-plaintext-0123456789",
        "http://127.0.0.1:9",
    )
    assert (grant.max_requests, grant.rate_limit_per_minute) == (None, 5)


async def test_unlimited_token_usage_reaches_the_database_on_flush(store, add_project, add_token) -> None:
    raw, token = await add_token(await add_project())
    authority = Authority(store, SETTINGS)
    grant = await authority.check(raw)
    for _ in range(3):
        await authority.count_request(grant)
    authority.count_cache_hit(grant)
    authority.count_cache_hit(grant)
    assert (await store.get_token(token.id)).request_count == 0  # batched, not written per request
    before = datetime.now(UTC)
    await authority.flush()
    saved = await store.get_token(token.id)
    assert (saved.request_count, saved.cache_hit_count) == (3, 2)
    assert saved.last_used_at is not None and saved.last_used_at >= before - timedelta(seconds=1)


async def test_a_closed_store_answers_503_service_unavailable(store, add_project, add_token) -> None:
    raw, _ = await add_token(await add_project())
    authority = Authority(store, SETTINGS)
    await store.close()
    error = await refusal_of(authority, raw)
    assert (error.refusal.status, error.refusal.code) == (503, "service_unavailable")


async def test_usage_written_while_the_store_is_closed_is_kept(store, add_project, add_token) -> None:
    raw, token = await add_token(await add_project())
    authority = Authority(store, SETTINGS)
    grant = await authority.check(raw)
    await authority.count_request(grant)
    await store.close()
    await authority.flush()  # fails, keeps the count
    await store.open()
    await authority.flush()
    assert (await store.get_token(token.id)).request_count == 1


async def test_an_unreachable_postgresql_answers_503_not_401(tmp_path) -> None:
    unreachable = PostgresStore("postgresql://postgres@127.0.0.1:1/test", None, connect_timeout=2.0)
    try:
        error = await refusal_of(Authority(unreachable, SETTINGS), "sk-" + "p" * 43)
    finally:
        await unreachable.close()
    assert (error.refusal.status, error.refusal.code) == (503, "service_unavailable")


async def test_an_unusable_sqlite_path_answers_503_not_401(tmp_path) -> None:
    (tmp_path / "file").write_text("")
    unusable = SqliteStore(str(tmp_path / "file" / "db.sqlite"), None)
    try:
        error = await refusal_of(Authority(unusable, SETTINGS), "sk-" + "s" * 43)
    finally:
        await unusable.close()
    assert (error.refusal.status, error.refusal.code) == (503, "service_unavailable")
