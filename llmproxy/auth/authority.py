"""Who may use the proxy: a withering token checked against a short-lived in-memory copy of the store.

A cached check awaits nothing (but Redis, once, for a rate-limited token when limits are shared).
Revocations and patches made here take effect at once through ``invalidate_token``/``invalidate_project``,
which also tell the other instances when they share Redis; otherwise those see them within
``key_cache_ttl`` (at once for limited tokens, whose every forwarded request is counted atomically in the
database). Counters of unlimited tokens and cache hits are batched and flushed every second.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import msgspec

from llmproxy.auth.flusher import UsageFlusher
from llmproxy.auth.grant import Grant, Limits
from llmproxy.auth.invalidation import Invalidations
from llmproxy.auth.ledger import Ledger, Spend
from llmproxy.auth.ratelimit import RateLimiter
from llmproxy.auth.shared_ratelimit import SharedRateLimiter
from llmproxy.auth.spend_limits import SpendLimits
from llmproxy.auth.token_rate import TokenRate
from llmproxy.auth.tokens import hash_token, token_hint
from llmproxy.config import AuthSettings
from llmproxy.errors import ProxyError, Refusal, StoreUnavailable
from llmproxy.redis_keys import tokens_rate_prefix
from llmproxy.store.base import Project, Store, Token

__all__ = ("Authority", "Grant", "Limits")

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0
NEGATIVE_TTL = 5.0  # unknown tokens are remembered this long (at most key_cache_ttl)
_PRUNE_EVERY = 60  # flush ticks between sweeps of idle rate-limit windows
_RETAIN_EVERY = 3600  # flush ticks between deletions of daily usage rows past USAGE_RETENTION_DAYS
T = TypeVar("T")


class _Entry:
    """One cached lookup. ``refusal`` answers unknown/revoked tokens; ``grant`` is None when the
    project is inactive or missing; ``counted`` is the request_count as far as known here; ``budgets``
    the token's and its project's ``Spend`` where they have a budget (empty: none)."""

    __slots__ = (
        "token_hash",
        "token_id",
        "project_id",
        "refusal",
        "grant",
        "expires_at",
        "stale_at",
        "counted",
        "exhausted",
        "budgets",
        "tpm",
        "limited",
    )

    def __init__(
        self,
        token_hash: str,
        stale_at: float,
        *,
        refusal: Refusal | None = None,
        token: Token | None = None,
        grant: Grant | None = None,
    ) -> None:
        self.token_hash = token_hash
        self.stale_at = stale_at
        self.refusal = refusal
        self.grant = grant
        self.token_id = token.id if token is not None else None
        self.project_id = token.project_id if token is not None else None
        self.expires_at = _timestamp(token.expires_at) if token is not None else None
        self.counted = token.request_count if token is not None else 0
        limit = token.max_requests if token is not None else None
        self.exhausted = limit is not None and self.counted >= limit
        self.budgets: tuple[Spend, ...] = ()
        self.tpm: tuple[tuple[str, int], ...] = ()  # (window key, tokens per minute) of token and project
        self.limited = False  # budgets or tpm: checked before each request


class Authority:
    """Checks withering tokens, enforces quota and rate limit, and counts their use."""

    def __init__(
        self,
        store: Store,
        settings: AuthSettings,
        *,
        clock: Callable[[], float] = time.time,
        shared_limiter: SharedRateLimiter | None = None,
        invalidations: Invalidations | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._ttl = settings.key_cache_ttl
        self._negative_ttl = min(settings.key_cache_ttl, NEGATIVE_TTL)
        self._max = settings.key_cache_max
        self._entries: dict[str, _Entry] = {}  # token hash -> entry, in insertion order
        self._by_token: dict[str, str] = {}  # token id -> token hash
        self._by_project: dict[str, set[str]] = {}  # project id -> token hashes
        self._loads: dict[str, asyncio.Task[_Entry]] = {}  # one store read per hash at a time
        self._generation = 0  # bumped by every invalidation: a read begun before must not be cached
        self._limiter = RateLimiter(max_keys=max(settings.key_cache_max, 1000), clock=clock)
        self._shared_limiter = shared_limiter  # None: per instance; else this one is the fallback
        self._invalidations = invalidations
        self.ledger = ledger = ledger if ledger is not None else Ledger()
        tpm = TokenRate(shared_limiter, prefix=tokens_rate_prefix(settings.redis_prefix), clock=clock)
        self._spend = SpendLimits(ledger, tpm)
        self._flusher = UsageFlusher(store, ledger, max_pending=max(settings.key_cache_max, 1000))
        self._store_failing = False

    # -- the hot path
    async def check(self, raw_token: str) -> Grant:
        """The grant of an allowed token, else ProxyError with the refusal (SPEC §5 table)."""
        token_hash = hash_token(raw_token)
        now = self._clock()
        entry = self._entries.get(token_hash)
        if entry is None or entry.stale_at <= now:
            entry = await self._lookup(token_hash)
        if entry.refusal is not None:
            raise _refused(entry.refusal, entry, raw_token)
        if entry.expires_at is not None and entry.expires_at <= now:
            raise _refused(Refusal.TOKEN_EXPIRED, entry, raw_token)
        grant = entry.grant
        if grant is None:
            raise _refused(Refusal.PROJECT_INACTIVE, entry, raw_token)
        if entry.exhausted:
            raise _refused(Refusal.QUOTA_EXCEEDED, entry, raw_token)
        if entry.limited:
            refusal = await self._spend.refusal(entry.budgets, entry.tpm)
            if refusal is not None:
                raise _refused(refusal[0], entry, raw_token, refusal[1], refusal[2])
        limit = grant.rate_limit_per_minute
        if limit is not None:
            shared = self._shared_limiter  # when Redis cannot answer (None), this instance counts alone
            verdict = await shared.hit(grant.token_id, limit) if shared is not None else None
            verdict = verdict or self._limiter.hit(grant.token_id, limit, now)
            if not verdict.allowed:
                raise _refused(Refusal.RATE_LIMITED, entry, raw_token, verdict.refusal_headers())
            return msgspec.structs.replace(grant, window=verdict)  # its x-ratelimit-* headers
        return grant

    async def count_request(self, grant: Grant) -> None:
        """Count a request about to be forwarded. Limited tokens are counted in the database, atomically
        against their quota; unlimited ones in memory until the next flush."""
        now = self._clock()
        if grant.max_requests is None:
            self._flusher.request(grant.token_id, now)
            return
        counted = await self._store_call(self._store.consume_request(grant.token_id, _utc(now)))
        token_id = grant.token_id
        entry = self._cached(token_id)
        if counted:
            if entry is not None:
                entry.counted += 1
                entry.exhausted = entry.counted >= grant.max_requests
            return
        # Refused by the database: quota used up (maybe by another instance), or the token was revoked.
        token = await self._store_call(self._store.get_token(token_id))
        if token is None or not token.is_active:
            self.invalidate_token(token_id)
            raise ProxyError(Refusal.TOKEN_REVOKED if token is not None else Refusal.INVALID_TOKEN)
        if entry is not None:
            entry.exhausted = True
        raise ProxyError(Refusal.QUOTA_EXCEEDED, project_id=grant.project_id, token_id=token_id)

    def count_cache_hit(self, grant: Grant) -> None:
        """A response served from the HTTP cache: counted in cache_hit_count, not request_count."""
        self._flusher.cache_hit(grant.token_id, self._clock())

    # -- invalidation
    def invalidate_token(self, token_id: str) -> None:
        """Forget what is cached about this token, here and on every instance: the next check reads the store."""
        self.drop_token(token_id)
        if self._invalidations is not None:
            self._invalidations.publish("token", token_id)

    def invalidate_project(self, project_id: str) -> None:
        """Forget every cached token of this project (deactivation, new key or upstream), everywhere."""
        self.drop_project(project_id)
        if self._invalidations is not None:
            self._invalidations.publish("project", project_id)

    def drop_token(self, token_id: str) -> None:
        """Forget what this instance cached about this token."""
        self._generation += 1
        self._loads.clear()
        token_hash = self._by_token.get(token_id)
        if token_hash is not None:
            self._evict(token_hash)

    def drop_project(self, project_id: str) -> None:
        """Forget what this instance cached about this project's tokens."""
        self._generation += 1
        self._loads.clear()
        for token_hash in list(self._by_project.get(project_id, ())):
            self._evict(token_hash)

    def drop_all(self) -> None:
        """Forget every cached lookup (invalidations may have been missed)."""
        self._generation += 1
        self._loads.clear()
        self._entries.clear()
        self._by_token.clear()
        self._by_project.clear()

    # -- background flushing
    async def run(self) -> None:
        """Flush batched usage every second until cancelled (then call ``flush()``)."""
        ticks = 0
        while True:
            if ticks % _RETAIN_EVERY == 0:
                await self._flusher.prune_usage()
            await asyncio.sleep(FLUSH_INTERVAL)
            await self.flush()
            ticks += 1
            if ticks % _PRUNE_EVERY == 0:
                self._limiter.prune()
                self._spend.tpm.local.prune()
                self._spend.forget_idle(self._by_token, self._by_project)

    async def flush(self) -> None:
        """Write batched counters and usage now, and read back the shared totals budgets compare against.
        Writes run one after another, each to its end even if its caller was cancelled (shutdown). Then
        the tokens-per-minute charges go to the shared windows."""
        await self._flusher.flush()
        await self._spend.tpm.send()

    # -- the cache
    async def _lookup(self, token_hash: str) -> _Entry:
        load = self._loads.get(token_hash)
        if load is None:
            load = asyncio.get_running_loop().create_task(self._load(token_hash), name="token-lookup")
            self._loads[token_hash] = load
            load.add_done_callback(functools.partial(self._load_done, token_hash))
        # Shielded: a client hanging up must not cancel the read other requests are waiting for.
        return await asyncio.shield(load)

    def _load_done(self, token_hash: str, load: asyncio.Task[_Entry]) -> None:
        if self._loads.get(token_hash) is load:
            del self._loads[token_hash]
        if not load.cancelled():
            load.exception()  # retrieved here, so an error nobody awaited any more is not reported

    async def _load(self, token_hash: str) -> _Entry:
        generation = self._generation
        token = await self._store_call(self._store.get_token_by_hash(token_hash))
        project = None
        if token is not None and token.is_active:
            project = await self._store_call(self._store.get_project(token.project_id))
        now = self._clock()
        entry = _new_entry(token_hash, token, project, now + self._ttl, now + self._negative_ttl)
        if entry.grant is not None and token is not None and project is not None:
            entry.budgets, entry.tpm = self._spend.limits_of(token, project)
            entry.limited = bool(entry.budgets or entry.tpm)
        if generation == self._generation:
            self._insert(entry)
        return entry

    async def _store_call(self, call: Awaitable[T]) -> T:
        """Await a store call; the store being down becomes 503 service_unavailable, logged once."""
        try:
            result = await call
        except StoreUnavailable as exc:
            if not self._store_failing:
                self._store_failing = True
                log.warning("store unavailable, answering token checks with 503: %s", exc)
            raise ProxyError(Refusal.SERVICE_UNAVAILABLE) from exc
        if self._store_failing:
            self._store_failing = False
            log.info("store available again")
        return result

    def _cached(self, token_id: str) -> _Entry | None:
        token_hash = self._by_token.get(token_id)
        return None if token_hash is None else self._entries.get(token_hash)

    def _insert(self, entry: _Entry) -> None:
        if entry.stale_at <= self._clock() or self._max <= 0:
            return
        self._evict(entry.token_hash)
        while len(self._entries) >= self._max:
            self._evict(next(iter(self._entries)))
        self._entries[entry.token_hash] = entry
        if entry.token_id is not None:
            self._by_token[entry.token_id] = entry.token_hash
        if entry.project_id is not None:
            self._by_project.setdefault(entry.project_id, set()).add(entry.token_hash)

    def _evict(self, token_hash: str) -> None:
        entry = self._entries.pop(token_hash, None)
        if entry is None:
            return
        if entry.token_id is not None:
            if self._by_token.get(entry.token_id) == token_hash:
                del self._by_token[entry.token_id]
        if entry.project_id is not None:
            hashes = self._by_project.get(entry.project_id)
            if hashes is not None:
                hashes.discard(token_hash)
                if not hashes:
                    del self._by_project[entry.project_id]


def _new_entry(
    token_hash: str, token: Token | None, project: Project | None, stale_at: float, negative_stale_at: float
) -> _Entry:
    if token is None:
        return _Entry(token_hash, negative_stale_at, refusal=Refusal.INVALID_TOKEN)
    if not token.is_active:
        return _Entry(token_hash, stale_at, refusal=Refusal.TOKEN_REVOKED, token=token)
    grant = None
    if project is not None and project.is_active:
        grant = Grant(
            token_id=token.id,
            project_id=token.project_id,
            api_key=project.api_key,
            upstream_base_url=project.upstream_base_url,
            max_requests=token.max_requests,
            rate_limit_per_minute=token.rate_limit_per_minute,
            token_hint=token.token_hint,
            limits=_limits(token, project),
            name=token.name,
            metadata=token.metadata,
        )
    return _Entry(token_hash, stale_at, token=token, grant=grant)


def _limits(token: Token, project: Project) -> Limits | None:
    """The grant's Limits, or None for a token (and project) without budgets, TPM or allowed models."""
    metered = any(
        limit is not None
        for limit in (
            token.max_tokens,
            token.max_cost_usd,
            token.tokens_per_minute,
            project.max_tokens,
            project.max_cost_usd,
            project.tokens_per_minute,
        )
    )
    allowed = tuple(token.allowed_models) if token.allowed_models is not None else None
    return Limits(metered, allowed) if metered or allowed is not None else None


def _refused(
    refusal: Refusal,
    entry: _Entry,
    raw_token: str,
    headers: dict[str, str] | None = None,
    message: str | None = None,
) -> ProxyError:
    """A refusal naming whose token it was (audit, access log): its hint, and its ids when known."""
    hint = token_hint(raw_token)
    return ProxyError(
        refusal,
        message,
        headers=headers,
        project_id=entry.project_id,
        token_id=entry.token_id,
        token_hint=hint,
    )


def _timestamp(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
