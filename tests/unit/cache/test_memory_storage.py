"""The in-process cache storage: LRU bounded by entries and bytes, TTL expiry, prefix purge."""

from __future__ import annotations

from llmproxy.cache.storage import Entry, MemoryStorage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(body: bytes = b"{}", *, ttl: float = 60.0, now: float = 1000.0) -> Entry:
    return Entry(
        status=200,
        headers=[("Content-Type", "application/json")],
        body=body,
        stored_at=now,
        expires_at=now + ttl,
        age=0,
        vary=[],
        etag=None,
        encoding="identity",
    )


async def test_a_stored_entry_is_returned_until_it_expires() -> None:
    clock = Clock()
    storage = MemoryStorage(max_entries=10, max_bytes=1 << 20, clock=clock)
    storage.put("k", entry(b"hello", ttl=30))
    found = await storage.get("k")
    assert found is not None and found.body == b"hello"
    clock.now += 30
    assert await storage.get("k") is None
    assert len(storage) == 0 and storage.bytes == 0


async def test_the_least_recently_used_entry_is_evicted_past_the_entry_limit() -> None:
    storage = MemoryStorage(max_entries=2, max_bytes=1 << 20, clock=Clock())
    storage.put("a", entry())
    storage.put("b", entry())
    assert await storage.get("a") is not None  # "b" is now the least recently used
    storage.put("c", entry())
    assert await storage.get("b") is None
    assert await storage.get("a") is not None and await storage.get("c") is not None
    assert len(storage) == 2


async def test_total_bytes_stay_within_the_byte_limit() -> None:
    storage = MemoryStorage(max_entries=100, max_bytes=3000, clock=Clock())
    for name in "abcdef":
        storage.put(name, entry(b"x" * 700))
        assert storage.bytes <= 3000
    assert await storage.get("a") is None
    assert await storage.get("f") is not None


async def test_an_entry_larger_than_the_whole_cache_is_not_kept() -> None:
    storage = MemoryStorage(max_entries=100, max_bytes=1000, clock=Clock())
    storage.put("small", entry(b"x"))
    storage.put("huge", entry(b"x" * 2000))
    assert await storage.get("huge") is None
    assert await storage.get("small") is not None


async def test_replacing_an_entry_does_not_count_its_bytes_twice() -> None:
    storage = MemoryStorage(max_entries=10, max_bytes=1 << 20, clock=Clock())
    storage.put("k", entry(b"x" * 100))
    before = storage.bytes
    storage.put("k", entry(b"y" * 100))
    assert storage.bytes == before and len(storage) == 1
    found = await storage.get("k")
    assert found is not None and found.body == b"y" * 100


async def test_purge_deletes_exactly_the_keys_under_the_prefix() -> None:
    storage = MemoryStorage(max_entries=10, max_bytes=1 << 20, clock=Clock())
    for k in ("c:p1:GET:/v1/models:aa", "c:p1:POST:/v1/chat:bb", "c:p2:GET:/v1/models:cc"):
        storage.put(k, entry())
    assert await storage.purge("c:p1:") == 2
    assert await storage.get("c:p2:GET:/v1/models:cc") is not None
    assert await storage.purge("c:") == 1
    assert len(storage) == 0 and storage.bytes == 0
