"""The frozen sections of components that read fields of more than one ``Settings`` section.

A component receives one section, never the whole ``Settings``: its own section of config.py when that
is all it reads (``AuthSettings``, ``CacheSettings``…), else one of these, which the composition roots
(``server/app.py``, ``server/run.py``, ``cli.py``) build once with ``Section.of(settings)``. Each holds
only what its component reads: the management token, the database URL and the encryption key never reach
a dispatcher worker process, for one. ``tests/test_architecture.py`` keeps ``Settings`` out of the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from llmproxy.config import DispatchSettings, EventSettings, LogSettings, RedisSettings, StreamSettings

if TYPE_CHECKING:
    from llmproxy.config import Settings

__all__ = (
    "AdminSettings",
    "BusSettings",
    "ObservabilitySettings",
    "PipelineSettings",
    "WorkerSettings",
    "shares_rate_limit",
    "uses_redis",
)


class BusSettings(msgspec.Struct, frozen=True):
    """Where events travel and how they are kept: the bus, its Redis and stream, its buffer, its dead
    letters. The events package's section (``make_bus``, ``make_source`` and the buses), read by
    whatever else looks at the stream or the dead letters (metrics, the admin UI, ``events dead``)."""

    kind: str  # LLM_PROXY_EVENT_BUS: in-memory | redis | redis-streams
    buffer_size: int  # OBSERVABILITY_BUFFER_SIZE
    dead_letter_file: str  # DEAD_LETTER_FILE, "" = off
    redis: RedisSettings
    streams: StreamSettings

    @classmethod
    def of(cls, settings: Settings) -> BusSettings:
        events = settings.events
        return cls(
            kind=events.bus,
            buffer_size=events.buffer_size,
            dead_letter_file=events.dead_letter_file or "",
            redis=settings.redis,
            streams=settings.streams,
        )


class WorkerSettings(msgspec.Struct, frozen=True):
    """A dispatcher's: the server's worker processes and in-process dispatchers, ``llm-proxy dispatcher``
    and ``llm-proxy events dead replay``. Pickled into each spawned worker process."""

    dispatch: DispatchSettings
    bus: BusSettings
    file_event_log: str  # FILE_EVENT_LOG: the file service's file unless LLM_PROXY_ENDPOINT names one
    log: LogSettings  # a worker process configures its own logging

    @classmethod
    def of(cls, settings: Settings) -> WorkerSettings:
        return cls(
            dispatch=settings.dispatch,
            bus=BusSettings.of(settings),
            file_event_log=settings.events.file_event_log,
            log=settings.log,
        )


class PipelineSettings(msgspec.Struct, frozen=True):
    """``server/pipeline.py``'s: the instrumentation's bounds, the dispatchers it runs, how long its
    shutdown may wait for them."""

    events: EventSettings
    worker: WorkerSettings
    shutdown_timeout: float  # SHUTDOWN_TIMEOUT

    @classmethod
    def of(cls, settings: Settings) -> PipelineSettings:
        return cls(
            events=settings.events,
            worker=WorkerSettings.of(settings),
            shutdown_timeout=settings.server.shutdown_timeout,
        )


class ObservabilitySettings(msgspec.Struct, frozen=True):
    """``server/observability.py``'s: the paths counted by name, and the bus whose backlog it reads."""

    allowed_endpoints: tuple[str, ...]  # API_CONFIG_PATH's allowed_endpoints
    bus: BusSettings

    @classmethod
    def of(cls, settings: Settings) -> ObservabilitySettings:
        return cls(allowed_endpoints=settings.upstream.api.allowed_endpoints, bus=BusSettings.of(settings))


class AdminSettings(msgspec.Struct, frozen=True):
    """The admin UI's: the token it signs in with, which pages have something to show, the dead letters."""

    management_token: str  # MANAGEMENT_TOKEN
    file_event_log: str  # FILE_EVENT_LOG: the live event tail reads it
    metrics_enabled: bool  # ENABLE_METRICS
    bus: BusSettings

    @classmethod
    def of(cls, settings: Settings) -> AdminSettings:
        return cls(
            management_token=settings.server.management_token,
            file_event_log=settings.events.file_event_log,
            metrics_enabled=settings.metrics_enabled,
            bus=BusSettings.of(settings),
        )


def uses_redis(settings: Settings) -> bool:
    """Redis is part of this deployment: REDIS_ADDR was given, or the event bus or the cache uses it.

    The default address alone does not count: a single instance without Redis must not try it.
    """
    cache_on_redis = settings.cache.enabled and settings.cache.backend == "redis"
    return settings.redis.addr_given or settings.events.bus != "in-memory" or cache_on_redis


def shares_rate_limit(settings: Settings) -> bool:
    """RATE_LIMIT_BACKEND: ``redis`` always, ``local`` never, ``auto`` when Redis is in use."""
    backend = settings.auth.rate_limit_backend
    return backend == "redis" or (backend == "auto" and uses_redis(settings))
