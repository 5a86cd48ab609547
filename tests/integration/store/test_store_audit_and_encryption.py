"""The Store contract for audit rows and API-key encryption at rest, on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta, timezone

import pytest

from llmproxy.store.base import AuditQuery

NOW = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
SECRET = "sk-live-upstream-secret-0123456789"


# -- audit


@pytest.fixture
async def five_records(store, new_audit):
    records = [
        new_audit(
            id=f"r{i}",
            timestamp=NOW + timedelta(minutes=i),
            action="token.revoke" if i % 2 else "project.create",
            result="denied" if i == 3 else "success",
            actor="admin" if i < 2 else "system",
            project_id="p-a" if i < 3 else "p-b",
            token_id=f"t{i}",
            request_id=f"req-{i}",
            reason="project_inactive" if i == 3 else None,
            details={"index": i, "nested": {"ok": True}},
        )
        for i in range(5)
    ]
    await store.insert_audit(records)
    return records


async def test_audit_rows_read_back_newest_first_with_a_total(store, five_records):
    rows, total = await store.list_audit(AuditQuery())
    assert total == 5
    assert rows == list(reversed(five_records))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (AuditQuery(action="token.revoke"), ["r3", "r1"]),
        (AuditQuery(result="denied"), ["r3"]),
        (AuditQuery(project_id="p-a"), ["r2", "r1", "r0"]),
        (AuditQuery(token_id="t4"), ["r4"]),
        (AuditQuery(request_id="req-2"), ["r2"]),
        (AuditQuery(actor="admin"), ["r1", "r0"]),
        (AuditQuery(since=NOW + timedelta(minutes=3)), ["r4", "r3"]),
        (AuditQuery(until=NOW + timedelta(minutes=1)), ["r1", "r0"]),
        (AuditQuery(since=NOW + timedelta(minutes=1), until=NOW + timedelta(minutes=3)), ["r3", "r2", "r1"]),
        (AuditQuery(action="project.create", project_id="p-a", actor="system"), ["r2"]),
        (AuditQuery(action="no-such-action"), []),
    ],
)
async def test_list_audit_applies_each_filter(store, five_records, query, expected):
    rows, total = await store.list_audit(query)
    assert [r.id for r in rows] == expected
    assert total == len(expected)


async def test_audit_time_filters_compare_instants_not_text(store, five_records):
    # 07:08 at UTC+2 is 05:08 UTC: r2 onwards. A text comparison would see "07" > "05" and match nothing.
    plus_two = timezone(timedelta(hours=2))
    since = (NOW + timedelta(minutes=2)).astimezone(plus_two)
    rows, total = await store.list_audit(AuditQuery(since=since))
    assert [r.id for r in rows] == ["r4", "r3", "r2"]


async def test_list_audit_pages_through_the_rows(store, five_records):
    pages = [await store.list_audit(AuditQuery(page=n, page_size=2)) for n in (1, 2, 3, 4)]
    assert [[r.id for r in rows] for rows, _ in pages] == [["r4", "r3"], ["r2", "r1"], ["r0"], []]
    assert {total for _, total in pages} == {5}


async def test_audit_record_without_id_gets_one(store, new_audit):
    await store.insert_audit([new_audit(id=""), new_audit(id="")])
    rows, total = await store.list_audit(AuditQuery())
    assert total == 2
    assert all(r.id for r in rows) and rows[0].id != rows[1].id


async def test_audit_result_outside_success_denied_error_is_refused(store, new_audit):
    with pytest.raises(ValueError) as refused:
        await store.insert_audit([new_audit(result="failure")])
    assert refused.value.args == ("result",)
    assert await store.list_audit(AuditQuery()) == ([], 0)


async def test_a_refused_audit_batch_writes_none_of_its_rows(store, new_audit):
    with pytest.raises(ValueError):
        await store.insert_audit([new_audit(id="ok"), new_audit(id="bad", result="oops")])
    assert await store.list_audit(AuditQuery()) == ([], 0)


# -- encryption at rest


async def test_api_key_is_stored_encrypted_and_read_back_plain(backend, new_project):
    key = os.urandom(32)
    store = await backend.opened(key)
    project = await store.create_project(new_project(api_key=SECRET))
    [(stored,)] = await backend.fetch_raw("SELECT api_key FROM projects")
    assert stored.startswith("enc:v1:")
    assert SECRET not in stored
    assert base64.b64encode(key).decode() not in stored and key.hex() not in stored
    assert (await store.get_project(project.id)).api_key == SECRET
    assert [p.api_key for p in await store.list_projects()] == [SECRET]


async def test_updated_api_key_is_encrypted_with_a_fresh_nonce(backend, new_project):
    store = await backend.opened(os.urandom(32))
    project = await store.create_project(new_project(api_key=SECRET))
    [(before,)] = await backend.fetch_raw("SELECT api_key FROM projects")
    updated = await store.update_project(project.id, {"api_key": SECRET})
    [(after,)] = await backend.fetch_raw("SELECT api_key FROM projects")
    assert updated.api_key == SECRET
    assert after.startswith("enc:v1:") and after != before


async def test_without_a_key_the_api_key_is_stored_plain(backend, new_project):
    store = await backend.opened()
    await store.create_project(new_project(api_key=SECRET))
    assert await backend.fetch_raw("SELECT api_key FROM projects") == [(SECRET,)]


async def test_plaintext_rows_written_before_a_key_was_set_still_read(backend, new_project):
    plain = await backend.opened()
    project = await plain.create_project(new_project(api_key=SECRET))
    encrypted = await backend.opened(os.urandom(32))
    assert (await encrypted.get_project(project.id)).api_key == SECRET


async def test_encrypted_row_without_a_key_is_a_clear_error_naming_encryption_key(backend, new_project):
    keyed = await backend.opened(os.urandom(32))
    project = await keyed.create_project(new_project(api_key=SECRET))
    keyless = await backend.opened()
    with pytest.raises(ValueError, match="ENCRYPTION_KEY"):
        await keyless.get_project(project.id)


async def test_encrypted_row_with_another_key_is_a_clear_error(backend, new_project):
    keyed = await backend.opened(os.urandom(32))
    project = await keyed.create_project(new_project(api_key=SECRET))
    other = await backend.opened(os.urandom(32))
    with pytest.raises(ValueError, match="ENCRYPTION_KEY"):
        await other.get_project(project.id)
