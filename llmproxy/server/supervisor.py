"""Dispatcher worker processes: spawn, watch, restart with backoff, stop on shutdown.

Workers are started with the ``spawn`` context, so they inherit no event loop, socket or lock from
the server; each gets its ``WorkerSettings`` (nothing else of the server's settings) and opens its own
Redis connection.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import time
from multiprocessing.process import BaseProcess

from llmproxy.config_sections import WorkerSettings
from llmproxy.dispatch.worker import worker_main

__all__ = ("Supervisor",)

log = logging.getLogger(__name__)

_BACKOFF_START = 0.5
_BACKOFF_CAP = 30.0
_HEALTHY_AFTER = 60.0  # a worker that lived this long restarts without accumulated backoff
_POLL = 0.25


class _Slot:
    """One worker position: service + index, the current process and its restart state."""

    def __init__(self, service: str, index: int) -> None:
        self.service = service
        self.index = index
        self.process: BaseProcess | None = None
        self.started_at = 0.0
        self.backoff = _BACKOFF_START
        self.restart_at = 0.0

    @property
    def name(self) -> str:
        return f"llm-proxy-dispatcher-{self.service}-{self.index}"


class Supervisor:
    """Keeps ``workers`` processes per service alive for the server's lifetime."""

    def __init__(self, settings: WorkerSettings, services: tuple[str, ...], workers: int) -> None:
        self._settings = settings
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = [_Slot(s, i) for s in services for i in range(workers)]
        self._stopping = False

    def _spawn(self, slot: _Slot) -> None:
        process = self._ctx.Process(
            target=worker_main,
            args=(self._settings, slot.service, slot.index),
            kwargs={"follow_server": True},  # a worker exits when the server is gone, however it died
            name=slot.name,
            daemon=False,
        )
        # The child inherits this signal mask through exec: a SIGHUP (logrotate) forwarded while it is
        # still importing stays pending instead of killing it, until its handler is in place.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        slot.process = process
        slot.started_at = time.monotonic()
        log.info("started dispatcher worker %s (pid %s)", slot.name, process.pid)

    async def run(self) -> None:
        """Start every worker, then restart any that dies, until cancelled."""
        for slot in self._slots:
            self._spawn(slot)
        while not self._stopping:
            now = time.monotonic()
            for slot in self._slots:
                process = slot.process
                if process is not None and process.is_alive():
                    continue
                if process is not None:
                    lived = now - slot.started_at
                    slot.backoff = (
                        _BACKOFF_START if lived >= _HEALTHY_AFTER else min(slot.backoff * 2, _BACKOFF_CAP)
                    )
                    slot.restart_at = now + slot.backoff
                    log.warning(
                        "dispatcher worker %s (pid %s) exited with %s after %.1fs; restarting in %.1fs",
                        slot.name,
                        process.pid,
                        process.exitcode,
                        lived,
                        slot.backoff,
                    )
                    process.close()
                    slot.process = None
                if now >= slot.restart_at:
                    self._spawn(slot)
            await asyncio.sleep(_POLL)

    def signal_all(self, signum: int) -> None:
        for slot in self._slots:
            if slot.process is not None and slot.process.is_alive() and slot.process.pid is not None:
                os.kill(slot.process.pid, signum)

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109 - a grace period before SIGKILL, not a deadline for us
        """SIGTERM every worker (they ack what they delivered and exit), SIGKILL after ``timeout``."""
        self._stopping = True
        alive = [s.process for s in self._slots if s.process is not None and s.process.is_alive()]
        for process in alive:
            process.terminate()
        deadline = time.monotonic() + timeout
        while any(p.is_alive() for p in alive) and time.monotonic() < deadline:  # noqa: ASYNC110 - a child's exit sets no asyncio event; is_alive() is a non-blocking waitpid
            await asyncio.sleep(0.05)
        for process in alive:
            if process.is_alive():
                log.warning(
                    "dispatcher worker pid %s did not stop in %.0fs: killing it", process.pid, timeout
                )
                process.kill()
        for process in alive:
            await asyncio.to_thread(process.join, 5)
