"""ACCESS_LOG: one JSON line per request the server answered, refusals included, never a secret.

aiohttp calls ``AccessLine.log`` once a response is finished (its access-log hook: status, bytes written
and duration are final); a proxy request whose client left mid-exchange is written by the edge as a 499.
On the loop a request costs one row of the values read from it; a thread formats, encodes and writes
them in batches, every FLUSH_INTERVAL or as soon as BATCH_LINES wait, so no request waits on a disk or on
journald; past MAX_PENDING rows (a stuck stderr) lines are dropped and counted, never held unbounded. A path
is opened append-only, 0640, and reopened by the writer on SIGHUP (logrotate), between two batches.

The writer is a daemon thread of its own, not the loop's executor: a write blocked for good (a stderr pipe
nobody reads) is given up after CLOSE_TIMEOUT at shutdown, and neither the loop's executor shutdown nor
the interpreter's exit waits for that thread, so SIGTERM still stops the server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import sys
import threading
import time
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from llmproxy.context import CALLER, ERROR_CODE, REQUEST_ID
from llmproxy.errors import StartupError
from llmproxy.filemodes import GROUP_READABLE, create_file, write_all
from llmproxy.redact import redact_query

__all__ = ("ACCESS_LOG", "AccessEntry", "AccessLine", "AccessLog")

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.25  # seconds a line may wait in memory
BATCH_LINES = 256  # a batch this large is written at once
MAX_PENDING = 50_000  # lines; past this (the writer is stuck), new ones are dropped and counted
CLOSE_TIMEOUT = 5.0  # seconds the last batches may take at shutdown; past it the writer is stuck: give up
# What ``record`` keeps of a request: arrival, request id, method, raw path, status, error code,
# seconds, project id, token hint, bytes in, bytes out, Cache-Status.
_Row = tuple[float, Any, str, str, int, Any, float, Any, Any, int, int, Any]
_Job = tuple[list[_Row], "concurrent.futures.Future[None]"]  # a batch and what its flush waits on


class AccessEntry(msgspec.Struct):
    """One access line; README "Access log" describes each field."""

    time: str  # when the request arrived, RFC 3339 UTC with µs
    request_id: str | None
    method: str
    path: str  # as received, credentials in the query string redacted
    status: int
    error: str | None  # error.code of a JSON error the proxy made itself, else null
    duration_ms: float
    project_id: str | None
    token: str | None  # the presented token's hint, sk-abcd…wxyz, never the token
    bytes_in: int
    bytes_out: int
    cache: str | None  # the answer's Cache-Status (hit, miss, bypass, stored …) when the cache is on


class AccessLog:
    """The destination (``-`` for stderr, or a path), its buffer and the writer that empties it."""

    def __init__(self, target: str, *, cache_enabled: bool = False) -> None:
        self.target = target
        self.dropped = 0
        self._cache_enabled = cache_enabled
        self._rows: list[_Row] = []
        self._encode_lines = msgspec.json.Encoder().encode_lines
        self._second = -1  # the whole second whose "YYYY-MM-DDTHH:MM:SS" is in _stamp (writer thread's)
        self._stamp = ""
        self._fd = -1
        self._lock = threading.Lock()  # one write or reopen at a time, in the writer thread
        self._reopen = False
        self._failing = False
        self._due = asyncio.Event()
        self._writing: asyncio.Future[None] | None = None
        self._writing_lines = 0  # rows in the batch being written
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    # --- the loop side -------------------------------------------------------------------------

    def record(self, request: web.BaseRequest, response: web.StreamResponse, seconds: float) -> None:
        """Keep one row for ``request``, answered with ``response`` after ``seconds``: only reads here;
        formatting and encoding are the writer thread's, a batch at a time."""
        rows = self._rows
        if len(rows) >= MAX_PENDING:
            self.dropped += 1
            return
        state: dict[Any, Any] = request._state  # aiohttp's: Mapping.get would raise and catch per miss
        caller = state.get(CALLER)
        cache = None
        if self._cache_enabled:
            statuses = response.headers.getall("Cache-Status", None)
            cache = statuses[-1] if statuses else None  # ours comes after an upstream's own
        rows.append(
            (
                time.time() - seconds,
                state.get(REQUEST_ID),
                request.method,
                request.raw_path,
                response.status,
                state.get(ERROR_CODE),
                seconds,
                caller.project_id if caller is not None else None,
                caller.token_hint if caller is not None else None,
                request.content.total_bytes,
                response.body_length,
                cache,
            )
        )
        if len(rows) >= BATCH_LINES:
            self._due.set()

    def reopen(self) -> None:
        """SIGHUP: the writer reopens the path before its next batch (now)."""
        self._reopen = True
        self._due.set()

    async def run(self) -> None:
        """Write the buffer every FLUSH_INTERVAL, or as soon as a batch is full, until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_INTERVAL):
                    await self._due.wait()
            self._due.clear()
            await self.flush()

    async def flush(self) -> None:
        """Hand what is buffered to the writer thread and wait for it (one batch at a time)."""
        if self._writing is not None and not self._writing.done():
            await asyncio.wait([self._writing])  # a batch cut short by cancellation still finishes first
        if not self._rows and not self._reopen:
            return
        batch, self._rows = self._rows, []
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._jobs.put((batch, done))
        self._writing, self._writing_lines = asyncio.wrap_future(done), len(batch)
        await asyncio.shield(self._writing)

    # --- start and stop ------------------------------------------------------------------------

    def open(self) -> None:
        """Open the destination and start the writer; a path that cannot be opened stops the start with one
        clear line."""
        if self.target == "-":
            self._fd = sys.stderr.fileno() if sys.stderr is not None else 2
        else:
            try:
                self._fd = create_file(self.target, GROUP_READABLE)
            except OSError as exc:
                raise StartupError(f"cannot open ACCESS_LOG {self.target}: {exc.strerror or exc}") from None
        self._writer = threading.Thread(target=self._work, name="access-log-writer", daemon=True)
        self._writer.start()

    async def aclose(self) -> None:
        """Write what is left, then stop the writer and close the file (stderr stays open). A writer still
        blocked after CLOSE_TIMEOUT is left behind with its batch, the lines counted as lost."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.flush()
        except TimeoutError:
            lost = len(self._rows) + self._writing_lines + self.dropped
            log.warning("access log: %s still not writable after %.0fs at shutdown: %d lines lost",
                        self.target, CLOSE_TIMEOUT, lost)  # fmt: skip
            self._jobs.put(None)
            return  # the blocked write keeps the file; the process's exit closes it
        if self.dropped:
            log.warning("access log: %d lines dropped while the writer could not keep up", self.dropped)
        self._jobs.put(None)  # the writer has written everything: it ends at once
        if self.target != "-" and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # --- the writer thread ---------------------------------------------------------------------

    def _work(self) -> None:
        """The writer thread: each batch handed over, in order, until the None that ``aclose`` sends."""
        while (job := self._jobs.get()) is not None:
            batch, done = job
            try:
                self._write(batch)
            except BaseException as exc:  # noqa: BLE001 - the loop's flush raises it, as from an executor
                done.set_exception(exc)
            else:
                done.set_result(None)

    def _write(self, batch: list[_Row]) -> None:
        with self._lock:
            if self._reopen:
                self._reopen = False
                self._reopen_file()
            if not batch:
                return
            try:
                write_all(self._fd, self._encode_lines(self._entries(batch)))
            except OSError as exc:
                if not self._failing:
                    log.warning("access log: cannot write %s (%s): lines lost", self.target, exc)
                self._failing = True
                return
            self._failing = False

    def _entries(self, batch: list[_Row]) -> list[AccessEntry]:
        """The rows as lines' entries: one loop with its names local (a call per row costs ~10%)."""
        entries: list[AccessEntry] = []
        append, entry, whole_second = entries.append, AccessEntry, self._whole_second
        for (
            arrived,
            request_id,
            method,
            path,
            status,
            error,
            seconds,
            project,
            token,
            size_in,
            size_out,
            cache,
        ) in batch:
            second = int(arrived)
            if "?" in path:
                path, _, query = path.partition("?")
                path = f"{path}?{redact_query(query)}"
            append(
                entry(
                    f"{whole_second(second)}.{int((arrived - second) * 1e6):06d}Z",
                    request_id,
                    method,
                    path,
                    status,
                    error,
                    int(seconds * 1e6) / 1000,
                    project,
                    token,
                    size_in,
                    size_out,
                    cache,
                )
            )
        return entries

    def _whole_second(self, second: int) -> str:
        """``YYYY-MM-DDTHH:MM:SS`` of ``second`` (UTC), formatted once per second."""
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._stamp

    def _reopen_file(self) -> None:
        if self.target == "-":
            return
        try:
            fd = create_file(self.target, GROUP_READABLE)
        except OSError as exc:
            log.warning("access log: cannot reopen %s (%s): still writing the old file", self.target, exc)
            return
        old, self._fd = self._fd, fd
        if old >= 0:
            os.close(old)


class AccessLine(AbstractAccessLogger):
    """aiohttp's access-log hook (made per connection, given the AccessLog as its "logger")."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.record(request, response, time)  # type: ignore[attr-defined]


ACCESS_LOG: web.AppKey[AccessLog] = web.AppKey("access-log", AccessLog)
