"""Cache invalidations that reach every instance at once: one Redis pub/sub channel, ``<prefix>invalidate``.

A message names what changed, ``token:<id>`` or ``project:<id>`` (ids only, never a secret), and every
listening instance (the sender too, harmlessly) drops what it cached about it. Messages sent while an
instance was not listening are lost, so each subscription begins by dropping its whole cache; the cache
TTL stays the bound on anything missed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from llmproxy.config import RedisSettings
from llmproxy.redis_client import connect_redis
from llmproxy.redis_keys import PREFIX, invalidation_channel

__all__ = ("Invalidations", "Listener")

log = logging.getLogger(__name__)

REDIS_ERRORS = (RedisError, OSError, TimeoutError)
DEGRADED = "degraded: cache TTL only"
_IDLE_PING = 5.0  # seconds of silence before the listener asks Redis whether the link still works
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 2.0
_HELD = 10.0  # a subscription that lasted this long was not flapping: the next outage backs off afresh
_MAX_SENDS = 1000  # publishes in flight beyond this are dropped (the TTL covers them)


class Listener(Protocol):
    """What an instance drops when told: the Authority's cache."""

    def drop_token(self, token_id: str) -> None: ...

    def drop_project(self, project_id: str) -> None: ...

    def drop_all(self) -> None: ...


class Invalidations:
    """``publish`` tells every instance; ``listen`` (a long-lived task) applies what others tell."""

    def __init__(self, settings: RedisSettings, *, prefix: str = PREFIX) -> None:
        self.channel = invalidation_channel(prefix)
        self._publisher = connect_redis(settings, socket_timeout=1.0)
        # No silent reconnect for the subscriber: a reconnect must be seen, since messages were missed.
        self._subscriber: Redis = connect_redis(settings, socket_timeout=1.0, retries=0)
        self._sends: set[asyncio.Task[None]] = set()
        self._publish_failing = False
        self._listen_failing = False
        self.listening = False

    def publish(self, kind: str, entity_id: str) -> None:
        """Queue ``<kind>:<id>`` for every instance; never waits, never raises."""
        if len(self._sends) >= _MAX_SENDS:
            return
        task = asyncio.get_running_loop().create_task(self._send(f"{kind}:{entity_id}"))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, message: str) -> None:
        try:
            await self._publisher.publish(self.channel, message)
        except REDIS_ERRORS as exc:
            if not self._publish_failing:  # once per outage
                self._publish_failing = True
                log.warning(
                    "cannot publish cache invalidations (%s); other instances rely on the cache TTL", exc
                )
            return
        self._publish_failing = False

    async def listen(self, listener: Listener) -> None:
        """Subscribe and apply invalidations until cancelled, reconnecting with backoff: 0.1 s doubling to
        2 s, from 0.1 s again once a subscription held (a flapping Redis must not empty the cache 10x/s)."""
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_FIRST
        while True:
            pubsub = self._subscriber.pubsub()
            subscribed_at: float | None = None
            try:
                await pubsub.subscribe(self.channel)
                subscribed_at = loop.time()
                listener.drop_all()  # whatever was sent before this subscription is unknown here
                self.listening = True
                if self._listen_failing:
                    self._listen_failing = False
                    log.info("listening for cache invalidations again")
                await self._receive(pubsub, listener)
            except REDIS_ERRORS as exc:
                self.listening = False
                if not self._listen_failing:  # once per outage
                    self._listen_failing = True
                    log.warning(
                        "cache invalidations: Redis unreachable (%s: %s); other instances' changes reach "
                        "this one within the cache TTL until it answers",
                        type(exc).__name__,
                        exc,
                    )
            finally:
                await pubsub.aclose()
            if subscribed_at is not None and loop.time() - subscribed_at > _HELD:
                backoff = _BACKOFF_FIRST
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _receive(self, pubsub: PubSub, listener: Listener) -> None:
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=_IDLE_PING)
            if message is None:
                if pinged:  # not even the answer to our PING: the link is dead
                    raise ConnectionError("no answer from Redis to PING on the invalidation channel")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            if message["type"] == "message":
                _apply(message["data"], listener)

    async def state(self) -> str | None:
        """For /ready: None while listening, else DEGRADED (changes elsewhere reach us within the TTL)."""
        return None if self.listening else DEGRADED

    async def aclose(self) -> None:
        """Let publishes in flight finish (each bounded by the socket timeout), then close."""
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)
        await self._publisher.aclose()
        await self._subscriber.aclose()


def _apply(data: bytes, listener: Listener) -> None:
    kind, _, entity_id = data.decode("utf-8", "replace").partition(":")
    if kind == "token":
        listener.drop_token(entity_id)
    elif kind == "project":
        listener.drop_project(entity_id)
