"""Dispatcher processes: the worker entry point the server spawns, and `llm-proxy dispatcher`.

A worker owns its loop and its Redis connections, runs one Dispatcher until SIGTERM, and publishes its
counters to Redis so the server's /metrics can add up every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import RedisError
from setproctitle import setproctitle

from llmproxy import logs
from llmproxy.config_sections import WorkerSettings
from llmproxy.dispatch.dispatcher import Dispatcher, DispatchStats
from llmproxy.dispatch.registry import make_backend
from llmproxy.errors import ConfigError, StartupError
from llmproxy.events.bus import BusUnavailable, EventBus
from llmproxy.events.factory import make_source
from llmproxy.loop import run_loop
from llmproxy.redis_client import connect_redis
from llmproxy.redis_keys import stats_key, totals_key

__all__ = (
    "STATS_INTERVAL",
    "run_dispatcher_command",
    "run_service",
    "worker_main",
    "worker_title",
)


if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

log = logging.getLogger(__name__)

STATS_INTERVAL = 2.0  # seconds between a worker's counter reports


# A gone worker's field, folded into the per-service totals (totals_key) and deleted, atomically: a scrape
# sees its counts once, never twice or not at all. Only the counters not already counted at ack time.
_FOLD = """
local doc = redis.call('HGET', KEYS[1], ARGV[1])
if not doc then return 0 end
local ok, report = pcall(cjson.decode, doc)
if ok and type(report) == 'table' then
  for _, name in ipairs({'retried', 'failed'}) do
    local n = tonumber(report[name])
    if n and n > 0 then redis.call('HINCRBY', KEYS[2], ARGV[2] .. ':' .. name, math.floor(n)) end
  end
end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""


def worker_title(service: str, index: int) -> str:
    """What ``ps`` shows for worker ``index`` (0-based) of ``service``: ``llm-proxy: dispatcher file #1``."""
    return f"llm-proxy: dispatcher {service} #{index + 1}"


def service_endpoint(settings: WorkerSettings, service: str) -> str:
    """``LLM_PROXY_ENDPOINT`` (``--endpoint``); for ``file`` only when it is a path, not the URL a server
    running ``file,lunary`` gives its HTTP backend, else ``FILE_EVENT_LOG``."""
    endpoint = settings.dispatch.endpoint
    if service == "file" and (not endpoint or endpoint.startswith(("http://", "https://"))):
        return settings.file_event_log
    return endpoint


async def run_service(
    settings: WorkerSettings,
    service: str,
    stop: asyncio.Event,
    *,
    bus: EventBus | None = None,
    consumer: str | None = None,
    stats: DispatchStats | None = None,
    on_started: Callable[[], None] | None = None,
    reopeners: list[Callable[[], None]] | None = None,
) -> None:
    """Run one Dispatcher for ``service`` until ``stop`` is set; close what it opened.

    ``reopeners`` collects the backend's ``reopen`` (file backend) for the owner's SIGHUP handler.
    """
    backend = make_backend(service, service_endpoint(settings, service), settings.dispatch.api_key)
    source = make_source(settings.bus, service, bus=bus, consumer=consumer)
    dispatcher = Dispatcher(
        source,
        backend,
        batch_size=settings.dispatch.batch_size,
        flush_interval=settings.dispatch.flush_interval,
        max_deliveries=settings.dispatch.max_deliveries,
        # an in-memory source never redelivers: keep retrying rather than leave a batch unacked
        max_attempts=None if bus is not None else 8,
        stats=stats,
    )
    reopen = getattr(backend, "reopen", None)
    if reopen is not None and reopeners is not None:
        reopeners.append(reopen)
    try:
        await source.start()
        if on_started is not None:
            on_started()
        await dispatcher.run(stop)
    finally:
        await source.aclose()
        await backend.aclose()


async def _report_stats(
    settings: WorkerSettings, service: str, field: str, stats: DispatchStats, stop: asyncio.Event
) -> None:
    """Publish this worker's counters every STATS_INTERVAL; when stopping, fold them into the totals.
    First fold the fields of this host's workers that died without doing so (kill -9): their replacement
    is this worker, so the hash keeps one field per live worker."""
    redis = connect_redis(settings.bus.redis, socket_timeout=2.0)
    key = stats_key(settings.bus.streams.key)
    fold = redis.register_script(_FOLD)
    totals = totals_key(settings.bus.streams.key)
    try:
        with contextlib.suppress(Exception):  # Redis down: the next worker to start folds them
            await _fold_dead_workers(redis, fold, key, totals)
        while True:
            doc = msgspec.json.encode({**msgspec.structs.asdict(stats), "at": time.time()})
            with contextlib.suppress(Exception):  # Redis down: the next report carries the totals
                await redis.hset(key, field, doc)
                if stop.is_set():
                    await fold(keys=[key, totals], args=[field, service])
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATS_INTERVAL)
    finally:
        await redis.aclose()


async def _fold_dead_workers(redis: Redis, fold: AsyncScript, key: str, totals: str) -> None:
    """Fold the fields ``<service>:<this host>-<pid>`` whose process is gone."""
    prefix = f"{socket.gethostname()}-"
    for raw in await redis.hkeys(key):
        field = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        service, _, consumer = field.partition(":")
        pid = consumer.removeprefix(prefix)
        if consumer.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
            await fold(keys=[key, totals], args=[field, service])


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now: not ours to judge
        return True
    return True


def _follow_server(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Stop, like on SIGTERM, as soon as the server that spawned this worker is gone, however it died.

    multiprocessing's spawn keeps the write end of a pipe in the server until the worker is reaped, and
    hands the worker its read end (``parent_process().sentinel``): it reads EOF once the server exited,
    kill -9 included, even if that happened before this loop started. Unlike PR_SET_PDEATHSIG it needs
    no ctypes, fires on the death of the process (not of the thread that spawned), and has no race.
    """
    parent = multiprocessing.parent_process()
    if parent is None:  # not a spawned process
        return
    sentinel = parent.sentinel

    def server_gone() -> None:
        if os.read(sentinel, 4096):  # not EOF: bytes of the spawn data the start-up left unread
            return
        loop.remove_reader(sentinel)
        log.warning("the server (pid %s) is gone: finishing the batch in hand and exiting", parent.pid)
        stop.set()

    loop.add_reader(sentinel, server_gone)


async def _worker(
    settings: WorkerSettings,
    service: str,
    on_started: Callable[[], None] | None = None,
    *,
    follow_server: bool = False,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if follow_server:
        _follow_server(loop, stop)
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    stats = DispatchStats()
    reopeners: list[Callable[[], None]] = []
    loop.add_signal_handler(signal.SIGHUP, lambda: [reopen() for reopen in reopeners])  # logrotate
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # blocked by the supervisor until now
    reporter = loop.create_task(_report_stats(settings, service, f"{service}:{consumer}", stats, stop))
    try:
        await run_service(
            settings,
            service,
            stop,
            consumer=consumer,
            stats=stats,
            on_started=on_started,
            reopeners=reopeners,
        )
    finally:
        stop.set()
        await reporter


def worker_main(
    settings: WorkerSettings, service: str, index: int = 0, *, follow_server: bool = False
) -> None:
    """Process entry point (multiprocessing spawn target and the standalone command).

    ``follow_server``: the server spawned this worker; it exits when the server is gone (no orphans).
    """
    # The server owns Ctrl-C: it stops workers with SIGTERM once it has drained its requests.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setproctitle(worker_title(service, index))  # in ps: not "python -B -c from multiprocessing.spawn …"
    logs.configure(settings.log.level, settings.log.format, settings.log.file)
    try:
        run_loop(_worker(settings, service, follow_server=follow_server))
    except BusUnavailable as exc:  # one line, not a traceback; the supervisor (or systemd) restarts us
        log.error("dispatcher %s #%d cannot start: %s", service, index + 1, exc)
        raise SystemExit(1) from None
    if follow_server:
        # Everything the worker owned is closed. Tearing the interpreter down (uvloop, redis, msgspec...)
        # takes 0.1 s on an idle machine and 0.5 s on a busy one: skip it, so a worker whose server is
        # gone exits within a second, and the server's own shutdown waits less.
        logging.shutdown()
        os._exit(0)


def run_dispatcher_command(
    settings: WorkerSettings, service: str, on_ready: Callable[[], None] | None = None
) -> int:
    """`llm-proxy dispatcher --service S`: one service read from Redis, in 1..N processes.

    A mistake in the command (exit 2) is named before Redis is tried; unreachable Redis is one line
    naming the address (exit 1), as for the server."""
    try:
        make_backend(service, service_endpoint(settings, service), settings.dispatch.api_key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if settings.bus.kind == "in-memory":
        raise ConfigError(
            "the standalone dispatcher reads Redis: set LLM_PROXY_EVENT_BUS=redis-streams (or redis)"
        )

    logs.configure(settings.log.level, settings.log.format, settings.log.file)
    try:
        run_loop(_reach_redis(settings))
        if settings.dispatch.workers <= 1:
            setproctitle(worker_title(service, 0))
            run_loop(_worker(settings, service, on_started=on_ready))
        else:
            setproctitle(f"llm-proxy: dispatcher {service}")
            _run_children(settings, service, on_ready)
    except BusUnavailable as exc:
        raise StartupError(f"event bus unavailable at start: {exc}") from None
    return 0


async def _reach_redis(settings: WorkerSettings) -> None:
    """Raise BusUnavailable naming the address unless Redis answers a PING (before any worker starts)."""
    redis = connect_redis(settings.bus.redis, socket_timeout=2.0)
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        raise BusUnavailable(f"Redis at {settings.bus.redis.addr} unreachable: {exc}") from None
    finally:
        await redis.aclose()


def _run_children(settings: WorkerSettings, service: str, ready: Callable[[], None] | None) -> None:
    """--workers N: N worker processes; SIGTERM here is passed on to each. systemd restarts the unit."""
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(target=worker_main, args=(settings, service, i)) for i in range(settings.dispatch.workers)
    ]
    for child in children:
        child.start()

    def pass_on_sigterm(*_: object) -> None:
        for child in children:
            if child.is_alive():
                child.terminate()

    signal.signal(signal.SIGTERM, pass_on_sigterm)
    if ready is not None:
        ready()
    for child in children:
        child.join()
