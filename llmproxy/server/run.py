"""serve(settings): uvloop, bind, run until SIGTERM/SIGINT, then drain in-flight requests and flush."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
from collections.abc import Callable

from aiohttp import web
from setproctitle import setproctitle

from llmproxy import logs
from llmproxy.config import ServerSettings, Settings
from llmproxy.errors import StartupError, StoreUnavailable
from llmproxy.events.bus import BusUnavailable
from llmproxy.loop import run_loop
from llmproxy.server.access_log import ACCESS_LOG, AccessLine
from llmproxy.server.app import BAD_REQUESTS, PIPELINE, build_app
from llmproxy.server.edge import EdgeRunner
from llmproxy.server.routing import route_proxy_first

__all__ = ("StartupError", "make_runner", "serve")

log = logging.getLogger(__name__)

# aiohttp's default of 128 overflows when the loop is busy for a moment while clients connect at hundreds a
# second (an instance filling up with streams, a load balancer failing over): each dropped SYN costs its
# client a 1 s retransmit. The kernel caps it at net.core.somaxconn (4096 on Linux >= 5.4).
# Generation 0 every 25,000 net allocations (CPython: 700), 1 every 100 of those, 2 every 10 of those (and only
# once the long-lived objects grew by a quarter): young garbage still goes within ~25k allocations, and a
# generation-1 pass (~1 s at 10,000 open streams: it walks all of them) waits for 2.5M allocations kept
# alive, past what 10,000 streams opening hold. Nothing a finished or failed stream leaves is a cycle
# (test_pool.py: a closed connection is freed at once), so little waits for it meanwhile.
GC_THRESHOLDS = (25_000, 100, 10)
LISTEN_BACKLOG = 1024
SPARE_FDS = 64  # what the server holds besides its streams: listener, store, logs, Redis, workers' pipes


def make_runner(app: web.Application, server: ServerSettings) -> web.AppRunner:
    """The runner serving ``build_app``'s ``app`` (the tests start theirs with it too).

    Request bodies reach the handlers as received: aiohttp would decode a ``Content-Encoding: gzip``
    body on the way in, and the proxy must forward the bytes the client sent under the framing it
    announced (``llmproxy.codings`` decodes a bounded copy where a body must be read).
    """
    access_log = app.get(ACCESS_LOG)  # None: ACCESS_LOG=off, and aiohttp skips its hook altogether
    return EdgeRunner(
        app,
        server,
        app[BAD_REQUESTS],
        handle_signals=False,
        access_log=access_log,  # AccessLine's "logger": our AccessLog
        access_log_class=AccessLine,
        shutdown_timeout=server.shutdown_timeout,
        auto_decompress=False,
    )


def tune_garbage_collector() -> int:
    """Once the server listens: freeze what start-up left alive (modules, settings, the price table:
    ~80 MB) out of the collector's reach, and collect young objects every GC_THRESHOLDS[0] allocations
    instead of 700. Measured with 500 streams opening a second (docs/performance.md, "Open streams"):
    CPython's default thresholds ran a full collection each time the heap grew by a quarter, each walking
    every open stream, and stalled the loop 0.35 s at 5,000 streams and 0.8 s at 9,900; with these (and the
    relay piping, so a waiting stream holds no young object), the ramp's lag p99 at 9,900 is 7–23 ms
    (generation-0 passes of 6–16 ms that free nothing). Returns the number of objects frozen."""
    gc.collect()  # start-up's garbage goes now rather than staying frozen for the process's life
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return gc.get_freeze_count()


async def _serve(settings: Settings, on_ready: Callable[[], None] | None) -> None:
    app = build_app(settings)
    runner = make_runner(app, settings.server)
    try:
        await runner.setup()
    except (StoreUnavailable, BusUnavailable) as exc:
        with contextlib.suppress(Exception):  # release what did start (cleanup runs only for those)
            await runner.cleanup()
        what = "database" if isinstance(exc, StoreUnavailable) else "event bus"
        raise StartupError(f"{what} unavailable at start: {exc}") from None
    route_proxy_first(runner)
    host, _, port = settings.server.listen_addr.rpartition(":")
    site = web.TCPSite(runner, host or None, int(port), backlog=LISTEN_BACKLOG)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {settings.server.listen_addr}: {exc.strerror or exc}") from None

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pipeline = app[PIPELINE]

    access_log = app.get(ACCESS_LOG)

    def reopen() -> None:  # SIGHUP: logrotate moved our files
        logs.reopen_files()
        pipeline.reopen()
        if access_log is not None:
            access_log.reopen()

    loop.add_signal_handler(signal.SIGHUP, reopen)
    log.info("llm-proxy listening on %s", settings.server.listen_addr)
    tune_garbage_collector()
    if on_ready is not None:
        on_ready()
    await stop.wait()
    log.info("shutting down: draining in-flight requests (up to %.0fs)", settings.server.shutdown_timeout)
    await runner.cleanup()
    log.info("stopped")


def serve(settings: Settings, on_ready: Callable[[], None] | None = None) -> None:
    """Run the server in this process until a stop signal. Raises StartupError."""
    run_loop(_serve(settings, on_ready))


def run_server_command(settings: Settings, on_ready: Callable[[], None] | None = None) -> int:
    """`llm-proxy server`: configure logging and serve until stopped. Raises StartupError."""
    setproctitle("llm-proxy: server")  # in ps, beside its "llm-proxy: dispatcher <service> #<n>" workers
    _serve_logged(settings, on_ready)
    return 0


def _serve_logged(settings: Settings, on_ready: Callable[[], None] | None) -> None:
    logs.configure(settings.log.level, settings.log.format, settings.log.file)
    raise_open_files_limit(settings.upstream.api.max_connections)
    serve(settings, on_ready)


def raise_open_files_limit(max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as Go's runtime does) and log how many open
    streams it allows: each holds two fds, client and upstream, so a shell's soft 1024 holds ~480."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # an unlimited hard limit, above fs.nr_open: keep the soft one
            pass
    streams = (soft - SPARE_FDS) // 2
    if 0 < streams < max_connections:
        log.warning("open files limit %d allows about %d open streams, fewer than max_connections %d: "
                    "raise LimitNOFILE (ulimit -n)", soft, streams, max_connections)  # fmt: skip
    else:
        log.info("open files limit %d: about %d open streams (2 fds each)", soft, streams)
    return streams


def run_migrate_command(settings: Settings) -> int:
    """`llm-proxy migrate`: apply pending migrations and list them."""
    import sys

    from llmproxy.store.factory import make_store

    async def migrate() -> list[str]:
        store = make_store(settings.store)
        try:
            await store.open()
            return await store.migrate()
        finally:
            await store.close()

    try:
        applied = asyncio.run(migrate())
    except StoreUnavailable as exc:
        sys.stderr.write(f"llm-proxy: database unavailable: {exc}\n")
        return 1
    print("database is up to date" if not applied else "applied: " + ", ".join(applied))
    return 0
