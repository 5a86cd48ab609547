"""What only the SQLite store promises: its file and directory appear on open, WAL, clear failures."""

from __future__ import annotations

import aiosqlite
import pytest

from llmproxy.errors import StoreUnavailable
from llmproxy.store.sqlite import SqliteStore


async def test_open_creates_the_file_and_its_parent_directories(tmp_path):
    path = tmp_path / "deep" / "er" / "proxy.db"
    store = SqliteStore(str(path), None)
    try:
        await store.open()
    finally:
        await store.close()
    assert path.is_file()


async def test_database_is_in_wal_mode_with_foreign_keys_enforced(tmp_path):
    path = tmp_path / "proxy.db"
    store = SqliteStore(str(path), None)
    try:
        await store.open()
        async with aiosqlite.connect(path) as raw:
            assert (await raw.execute_fetchall("PRAGMA journal_mode"))[0][0] == "wal"
        db = store._db  # the store's own connection: foreign keys are per connection
        assert (await db.execute_fetchall("PRAGMA foreign_keys"))[0][0] == 1
    finally:
        await store.close()


async def test_unopenable_path_raises_store_unavailable_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path = blocker / "proxy.db"
    store = SqliteStore(str(path), None)
    with pytest.raises(StoreUnavailable, match="a-file"):
        await store.open()
    with pytest.raises(StoreUnavailable):
        await store.ping()
    await store.close()


async def test_a_file_that_is_not_a_database_raises_store_unavailable(tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite at all, just some bytes" * 100)
    store = SqliteStore(str(path), None)
    with pytest.raises(StoreUnavailable, match="garbage.db"):
        await store.open()
    await store.close()


async def test_in_memory_database_works_for_one_store(tmp_path):
    store = SqliteStore(":memory:", None)
    try:
        assert await store.migrate() == ["0001_initial", "0002_admin_sessions", "0003_spend"]
        await store.ping()
    finally:
        await store.close()
