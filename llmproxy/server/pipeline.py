"""The event pipeline the server owns: the bus the proxy publishes to and the dispatchers draining it.

in-memory bus: one Dispatcher task per service inside this process. redis / redis-streams: the bus
producer here, and DISPATCHER_WORKERS worker processes per service, supervised.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable

from llmproxy.config_sections import PipelineSettings
from llmproxy.dispatch.dispatcher import DispatchStats
from llmproxy.dispatch.worker import run_service
from llmproxy.events.bus import EventBus
from llmproxy.events.factory import make_source
from llmproxy.events.memory import InMemoryBus
from llmproxy.proxy.flow import Observer
from llmproxy.proxy.instrument import Instrumentation
from llmproxy.proxy.metering import Metering
from llmproxy.redis_client import connect_redis
from llmproxy.server.supervisor import Supervisor

__all__ = ("EventPipeline",)

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[None]]


class EventPipeline:
    """Publishes one event per proxied request and runs the dispatchers for DISPATCHER_SERVICES."""

    def __init__(
        self,
        settings: PipelineSettings,
        bus: EventBus,
        instrumentation: Instrumentation,
        supervisor: Supervisor | None = None,
        meter: Metering | None = None,
    ) -> None:
        """``bus``, the ``instrumentation`` publishing to it and the ``supervisor`` of worker processes
        (a Redis bus with services) are chosen by the composition root (server/app.py); so is the ``meter``
        that reads the usage of metered tokens when no event is built (owned here for its shutdown)."""
        self._worker = settings.worker  # what each dispatcher, task or process, is handed
        self._shutdown_timeout = settings.shutdown_timeout
        self.services = settings.worker.dispatch.services
        self.bus = bus
        self.in_process = isinstance(bus, InMemoryBus)
        self.instrumentation = instrumentation
        # With an in-memory bus and no dispatcher, events would go nowhere: don't build them at all.
        publishing = not self.in_process or bool(self.services)
        self.observers: list[Observer] = [self.instrumentation] if publishing else []
        self.meter = meter
        self.stats: dict[str, DispatchStats] = {s: DispatchStats() for s in self.services}
        self.supervisor = supervisor
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._reopeners: list[Callable[[], None]] = []
        self.probes: dict[str, Probe] = {} if self.in_process else {"event_bus": self._ping_redis}

    async def _ping_redis(self) -> None:
        redis = connect_redis(self._worker.bus.redis, socket_timeout=1.0)
        try:
            await redis.ping()
        finally:
            await redis.aclose()

    async def start(self) -> None:
        await self.bus.start()
        loop = asyncio.get_running_loop()
        if self.in_process:
            for service in self.services:
                run = run_service(
                    self._worker,
                    service,
                    self._stop,
                    bus=self.bus,
                    stats=self.stats[service],
                    reopeners=self._reopeners,
                )
                self._tasks.append(loop.create_task(run, name=f"dispatcher-{service}"))
        elif self.supervisor is not None:
            await self._create_groups()
            self._tasks.append(loop.create_task(self.supervisor.run(), name="dispatcher-supervisor"))

    async def _create_groups(self) -> None:
        """Join every service's consumer group now, before the first request is served.

        A group is created at ``$``; were it left to the worker processes, events published while
        they start would be behind the group's position and never delivered to that service.
        """
        for service in self.services:
            source = make_source(self._worker.bus, service, consumer=f"{service}-setup")
            try:
                await source.start()
            finally:
                await source.aclose()

    def reopen(self) -> None:
        """SIGHUP: in-process file dispatchers reopen their file; worker processes get their own SIGHUP."""
        for reopen in self._reopeners:
            reopen()
        if self.supervisor is not None:
            self.supervisor.signal_all(signal.SIGHUP)

    async def aclose(self) -> None:
        """Publish what waits, flush the bus, let dispatchers deliver it, then stop them."""
        timeout = self._shutdown_timeout
        await self.instrumentation.aclose()
        if self.meter is not None:
            await self.meter.aclose()
        if self.in_process:
            await self._drain_in_process(deadline=time.monotonic() + timeout)
            self._stop.set()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.bus.aclose()
            return
        await self.bus.aclose()  # flushes buffered events to Redis (bounded)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.supervisor is not None:
            await self.supervisor.stop(timeout)

    async def _drain_in_process(self, deadline: float) -> None:
        """Wait (bounded) until every in-process dispatcher has taken what was published."""
        if not self._tasks:
            return
        assert isinstance(self.bus, InMemoryBus)
        while time.monotonic() < deadline and self.bus.stats().get("queued", 0) > 0:
            if all(t.done() for t in self._tasks):
                return
            await asyncio.sleep(0.05)
        await asyncio.sleep(0)
