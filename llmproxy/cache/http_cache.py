"""The HTTP response cache the proxy consults after auth: lookup → hit response, or a ticket for the store.

A hit is built from the entry alone (no upstream, no event); the server middleware gives it a fresh
X-Request-ID. The decisions live in ``cache.keys``, the bytes in a ``cache.storage`` backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDictProxy

from llmproxy.cache.keys import (
    RequestRule,
    accepts_encoding,
    body_digest,
    cache_key,
    etag_matches,
    request_rule,
    response_ttl,
    stored_headers,
    upstream_age,
    vary_matches,
    vary_names,
    vary_snapshot,
)
from llmproxy.cache.storage import Entry, MemoryStorage, RedisStorage, Storage, connect_cache_redis
from llmproxy.config import CacheSettings, RedisSettings

__all__ = ("CacheStats", "HttpCache", "make_cache")

# A 304 repeats only these of the stored fields (RFC 9110 §15.4.5).
_NOT_MODIFIED_FIELDS = frozenset({"cache-control", "content-location", "etag", "expires", "vary"})
_BYPASS_HEADERS = (("X-PROXY-CACHE", "miss"), ("Cache-Status", "bypass"))
_MEMORY_MAX_ENTRIES = 10_000
_MEMORY_MIN_BYTES = 64 * 1024 * 1024


class _Scoped(Protocol):
    """The part of the auth grant the cache reads: entries are per project."""

    @property
    def project_id(self) -> str: ...


class _Ticket:
    """What the lookup decided for a request that goes upstream, read again by storable/store."""

    __slots__ = ("key", "rule", "status", "ttl", "sized")

    def __init__(self, key: str, rule: RequestRule, status: str) -> None:
        self.key = key
        self.rule = rule
        self.status = status  # "miss" (looked up, not found) or "bypass" (lookup skipped)
        self.ttl = 0.0  # set by storable(): > 0 when the answer is to be stored
        self.sized = False  # its Content-Length is known (and within the limit): it will be stored


_TICKET: web.RequestKey[_Ticket] = web.RequestKey("llmproxy.cache", _Ticket)


class CacheStats:
    """Counters for the metrics: hits (conditional ones too), misses, bypasses, stores."""

    __slots__ = ("hits", "misses", "bypass", "stores")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.bypass = 0
        self.stores = 0


class HttpCache:
    """SPEC §8 over a Storage: ``lookup`` before forwarding; ``storable``, ``response_headers`` and
    ``store`` around the upstream answer; ``purge`` for ``DELETE /manage/cache``."""

    def __init__(
        self, cache: CacheSettings, storage: Storage, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_object_bytes = cache.max_object_bytes
        self.stats = CacheStats()
        self._prefix = cache.key_prefix
        self._default_ttl = cache.default_ttl
        self._stream_responses = cache.stream_responses
        self._storage = storage
        self._clock = clock

    async def lookup(self, request: web.Request, grant: _Scoped, body: bytes) -> web.StreamResponse | None:
        """The cached answer to ``request``, or None (after noting what to do with the fresh one)."""
        headers = request.headers
        rule = request_rule(request.method, headers.get("Cache-Control"), headers.get("Pragma"))
        if not rule.store and not rule.lookup:
            self.stats.bypass += 1
            return None
        key = self._key(request, grant.project_id, body)
        if not rule.lookup:
            self.stats.bypass += 1
            request[_TICKET] = _Ticket(key, rule, "bypass")
            return None
        entry = await self._storage.get(key)
        now = self._clock()
        if entry is not None:
            age = entry.age + int(now - entry.stored_at)
            if (
                (rule.max_age is None or age <= rule.max_age)
                and vary_matches(entry.vary, headers)
                and accepts_encoding(headers.get("Accept-Encoding"), entry.encoding)
            ):
                self.stats.hits += 1
                return _replay(request, key, entry, age)
        self.stats.misses += 1
        request[_TICKET] = _Ticket(key, rule, "miss")
        return None

    def storable(self, request: web.Request, status: int, headers: CIMultiDictProxy[str]) -> bool:
        """Whether the upstream answer to a looked-up request is to be kept (body permitting)."""
        ticket: _Ticket | None = request.get(_TICKET)
        if ticket is None or not self._storage.available():
            return False
        ticket.sized = "Content-Length" in headers
        ticket.ttl = response_ttl(
            status,
            headers,
            ticket.rule,
            default_ttl=self._default_ttl,
            stream_responses=self._stream_responses,
            max_object_bytes=self.max_object_bytes,
        )
        return ticket.ttl > 0

    def response_headers(self, request: web.Request) -> tuple[tuple[str, str], ...]:
        """The cache's headers on a forwarded answer: ``Cache-Status`` bypass, miss, or stored.

        ``stored`` is said only when it is sure: a cacheable answer of announced size within the limit.
        A stream (no Content-Length) says ``miss`` and is stored only if it completes within the limit.
        """
        ticket = request.get(_TICKET)
        if ticket is None:
            return _BYPASS_HEADERS
        status = "stored" if ticket.ttl > 0 and ticket.sized else ticket.status
        return (("X-PROXY-CACHE", "miss"), ("Cache-Status", status), ("X-PROXY-CACHE-KEY", ticket.key))

    async def store(
        self,
        request: web.Request,
        grant: _Scoped,
        body: bytes,
        status: int,
        headers: CIMultiDictProxy[str],
        response_body: bytes,
    ) -> None:
        """Keep a complete answer that ``storable`` accepted; returns at once (Redis writes on a task)."""
        ticket = request.get(_TICKET)
        if ticket is None or ticket.ttl <= 0 or len(response_body) > self.max_object_bytes:
            return
        now = self._clock()
        names = vary_names(headers.getall("Vary", [])) or ()
        entry = Entry(
            status=status,
            headers=stored_headers(headers),
            body=response_body,
            stored_at=now,
            expires_at=now + ticket.ttl,
            age=upstream_age(headers),
            vary=vary_snapshot(names, request.headers),
            etag=headers.get("ETag"),
            encoding=headers.get("Content-Encoding", "identity").strip().lower() or "identity",
        )
        self._storage.put(ticket.key, entry)
        self.stats.stores += 1

    async def purge(self, prefix: str | None) -> int:
        """Delete entries whose key, after REDIS_CACHE_KEY_PREFIX, starts with ``prefix`` (all if None):
        ``<project_id>:`` for a project, ``<project_id>:POST:/v1/chat/completions`` for an endpoint, a
        whole key for one entry. ``prefix`` may start with REDIS_CACHE_KEY_PREFIX, as X-PROXY-CACHE-KEY does."""
        prefix = prefix or ""
        if self._prefix and prefix.startswith(self._prefix):
            prefix = prefix[len(self._prefix) :]
        return await self._storage.purge(self._prefix + prefix)

    async def aclose(self) -> None:
        await self._storage.aclose()

    def _key(self, request: web.Request, project_id: str, body: bytes) -> str:
        method = request.method
        if method == "HEAD":
            method = "GET"  # a HEAD is answered from the GET's entry
        path, _, query = request.raw_path.partition("?")
        accept = request.headers.getall("Accept", ())
        return cache_key(
            self._prefix,
            project_id,
            method,
            path,
            query,
            accept[0] if len(accept) == 1 else ",".join(accept),
            body_digest(body) if method == "POST" else "",
        )


def _replay(request: web.Request, key: str, entry: Entry, age: int) -> web.Response:
    """The stored answer (or a 304 when If-None-Match names its ETag), with the cache's headers."""
    inm = request.headers.get("If-None-Match")
    if (
        inm is not None
        and entry.etag is not None
        and request.method in ("GET", "HEAD")
        and etag_matches(inm, entry.etag)
    ):
        kept = [(n, v) for n, v in entry.headers if n.lower() in _NOT_MODIFIED_FIELDS]
        resp = web.Response(status=304, headers=kept)
        status = "conditional-hit"
    else:
        resp = web.Response(status=entry.status, body=entry.body, headers=entry.headers)
        status = "hit"
    out = resp.headers
    out["Age"] = str(age)
    out["X-PROXY-CACHE"] = "hit"
    out["X-PROXY-CACHE-KEY"] = key
    out["Cache-Status"] = status
    return resp


def make_cache(cache: CacheSettings, redis: RedisSettings) -> HttpCache:
    """The cache for ``HTTP_CACHE_BACKEND``: a bounded in-process LRU, or Redis shared by instances."""
    if cache.backend == "redis":
        storage: Storage = RedisStorage(connect_cache_redis(redis))
    else:
        max_bytes = max(_MEMORY_MIN_BYTES, 8 * cache.max_object_bytes)
        storage = MemoryStorage(max_entries=_MEMORY_MAX_ENTRIES, max_bytes=max_bytes)
    return HttpCache(cache, storage)
