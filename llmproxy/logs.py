"""Logging set-up: text or JSON lines, to stderr or LOG_FILE, with secrets redacted.

Lines are written by a thread of their own, never by the thread that logs: the event loop hands a
record to a bounded queue and goes on, so a stderr nobody reads (a wedged journald, a full pipe) or a
slow disk never stalls it. Past ``QUEUE_MAX`` waiting records new ones are dropped and counted (a line
says how many once the output takes lines again); at exit the writer gets ``CLOSE_TIMEOUT`` to write
what waits. Records are redacted, and their arguments merged into the message, by the thread that logs,
so what is written is what was true when it was logged. The writer writes with ``os.write`` and holds no
lock while it does: a write stuck for good blocks no other thread, not even the exit.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import queue
import threading
import time
from typing import Any

from llmproxy.filemodes import GROUP_READABLE, create_file, write_all
from llmproxy.redact import redact_text

__all__ = ("CLOSE_TIMEOUT", "QUEUE_MAX", "close", "configure", "flush", "reopen_files")

QUEUE_MAX = 10_000  # records waiting for the writer; past this they are dropped, and counted
CLOSE_TIMEOUT = 5.0  # seconds the writer gets at exit to write what waits


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        record.msg = redact_text(str(record.msg))
        return True


class _JsonFormatter(logging.Formatter):
    _SKIP = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in vars(record).items() if k not in self._SKIP})
        if record.exc_info:
            doc["exc"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(doc, default=str)


class _Output(logging.Handler):
    """stderr or LOG_FILE, written by the writer thread alone: ``handle`` takes no lock (logging.shutdown
    takes every handler's at exit, and a write stuck on a full pipe would hold it for good)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.fd = create_file(path, GROUP_READABLE) if path else _stderr()
        self.writing = False

    def handle(self, record: logging.LogRecord) -> bool:
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:  # a record that cannot be formatted is not worth a traceback on stderr
            return
        self.writing = True
        try:
            write_all(self.fd, line)
        except OSError:  # EPIPE, disk full: the line is lost, the writer goes on
            pass
        finally:
            self.writing = False

    def reopen(self) -> None:
        """LOG_FILE again, after logrotate renamed it (the old file kept if the new cannot be opened)."""
        if self.path:
            try:
                fd = create_file(self.path, GROUP_READABLE)
            except OSError:
                return
            old, self.fd = self.fd, fd
            os.close(old)

    def close(self) -> None:
        if self.fd >= 0 and not self.writing:  # a stuck write keeps its descriptor: the exit closes it
            os.close(self.fd)
            self.fd = -1
        super().close()


def _stderr() -> int:
    """A descriptor of our own on stderr (so the exit's flush of ``sys.stderr`` never meets a write stuck
    on it); /dev/null when there is none."""
    try:
        return os.dup(2)
    except OSError:
        return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


class _Marker:
    """Queued among the records, done by the writer in order: reopen, flush, stop."""

    __slots__ = ("action", "done")

    def __init__(self, action: str) -> None:
        self.action = action
        self.done = threading.Event()


class _QueueHandler(logging.handlers.QueueHandler):
    """Hands each record to the writer; never waits (a full queue drops the record and counts it)."""

    def __init__(self, records: queue.Queue[Any]) -> None:
        super().__init__(records)
        self.records = records  # (``queue`` is typed as a bare put_nowait)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record  # the filter merged the arguments; formatting (and exc_info) is the writer's

    def enqueue(self, record: Any) -> None:
        try:
            self.records.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _Writer:
    """The thread that writes the records and does the markers, in the order they were queued."""

    def __init__(self, handler: _QueueHandler, output: _Output) -> None:
        self.handler, self.output = handler, output
        self.reopen_wanted = False  # a SIGHUP that found the queue full: reopen after the next record
        self.thread = threading.Thread(target=self._run, name="llmproxy-log", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        records, output = self.handler.records, self.output
        while True:
            item = records.get()
            if isinstance(item, _Marker):
                if item.action == "reopen":
                    output.reopen()
                item.done.set()
                if item.action == "stop":
                    return
                continue
            output.handle(item)
            if self.reopen_wanted:
                self.reopen_wanted = False
                output.reopen()
            if self.handler.dropped:
                dropped, self.handler.dropped = self.handler.dropped, 0  # (a count lost here is one line)
                note = logging.LogRecord("llmproxy.logs", logging.WARNING, __file__, 0, "", None, None)
                note.msg = f"{dropped} log lines dropped: the log output did not take them in time"
                output.handle(note)

    def mark(self, action: str, timeout: float) -> bool:
        """``action`` queued behind what waits; True once the writer did it within ``timeout``."""
        marker = _Marker(action)
        try:
            self.handler.records.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.done.wait(timeout)


_writer: _Writer | None = None


def configure(level: str = "info", format: str = "text", file: str = "") -> None:
    """Route the root logger (LOG_LEVEL, LOG_FORMAT, LOG_FILE) through the writer thread."""
    global _writer
    close()
    output = _Output(file)
    if format == "json":
        output.setFormatter(_JsonFormatter())
    else:
        output.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler = _QueueHandler(queue.Queue(QUEUE_MAX))
    handler.addFilter(_RedactingFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    _writer = _Writer(handler, output)


def flush(timeout: float = CLOSE_TIMEOUT) -> bool:
    """Until what was logged so far is written (True), or ``timeout`` passed (False)."""
    return _writer is None or _writer.mark("flush", timeout)


def reopen_files() -> None:
    """LOG_FILE reopened after logrotate's rename, behind the records logged before. Never waits (the
    event loop calls it on SIGHUP)."""
    writer = _writer
    if writer is not None:
        try:
            writer.handler.records.put_nowait(_Marker("reopen"))
        except queue.Full:
            writer.reopen_wanted = True


def close(timeout: float = CLOSE_TIMEOUT) -> None:
    """Write what waits (within ``timeout``), stop the writer, close the output. A writer still stuck
    after ``timeout`` (an output nobody reads) is left behind, a daemon thread, with its descriptor."""
    global _writer
    writer, _writer = _writer, None
    if writer is None:
        return
    root = logging.getLogger()
    if writer.handler in root.handlers:
        root.removeHandler(writer.handler)
    if writer.mark("stop", timeout):
        writer.output.close()


def _after_fork_in_child() -> None:
    """A forked child inherits the handler but not the writer thread: it gets a writer of its own."""
    global _writer
    if _writer is not None:
        _writer.handler.queue = _writer.handler.records = queue.Queue(QUEUE_MAX)
        _writer = _Writer(_writer.handler, _writer.output)


atexit.register(close)
os.register_at_fork(after_in_child=_after_fork_in_child)
