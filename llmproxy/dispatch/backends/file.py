"""The `file` backend: events appended as JSON lines, each event id at most once, never a partial line.

One write() and one fdatasync per batch, in a worker thread so the event loop never waits on disk.
Events read from Redis are written as the bytes the proxy stored (``send_lines``: checked, never
decoded and encoded again); events handed over as ``Event`` objects are encoded here.
Writers hold an exclusive flock while appending, so several workers can share one file: before a
write, bytes another process appended since our last write are scanned for ids (dedupe holds
across processes) and a partial line left by a writer that crashed mid-write is truncated away
(its batch was never acked, so it is redelivered and written whole). A failed write is truncated
back too. On open, the ids in the last `scan_limit_bytes` of the file seed the dedupe window.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading

import msgspec

from llmproxy.dispatch.backends.base import DeliveryError, RecentIds
from llmproxy.events.model import Event, encode_event
from llmproxy.filemodes import GROUP_DIR, GROUP_READABLE, create_file, make_dirs, warn_if_exposed

__all__ = ("FileBackend",)

logger = logging.getLogger(__name__)

_ID_PREFIX = b'{"id":"'  # msgspec writes Event fields in order, so every line starts with its id
_READ_CHUNK = 1 << 20


class _EventId(msgspec.Struct):
    id: str


_id_decoder = msgspec.json.Decoder(_EventId)


class FileBackend:
    """Append-only JSONL event log that survives crashes, redeliveries and logrotate."""

    name = "file"

    def __init__(
        self, path: str | os.PathLike[str], *, dedupe_window: int = 100_000, scan_limit_bytes: int = 256 << 20
    ) -> None:
        self.path = os.fspath(path)
        self.scan_limit_bytes = scan_limit_bytes
        self._ids = RecentIds(dedupe_window)
        self._lock = threading.Lock()  # one thread at a time touches the fd and the id window
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._end = 0  # offset up to which every line's id is in the window
        self._reopen_requested = False

    async def send(self, batch: list[Event]) -> None:
        await self.send_lines([(event.id, encode_event(event)) for event in batch])

    async def send_lines(self, batch: list[tuple[str, bytes]]) -> None:
        """(event id, the event as one line of JSON without its newline) pairs, appended in order."""
        if batch:
            await asyncio.to_thread(self._append, batch)

    def reopen(self) -> None:
        """Reopen the path before the next write (SIGHUP after logrotate); safe in a signal handler."""
        self._reopen_requested = True

    async def aclose(self) -> None:
        await asyncio.to_thread(self._close)

    def _append(self, batch: list[tuple[str, bytes]]) -> None:
        with self._lock:
            try:
                if self._fd is None or self._reopen_requested:
                    self._open()
                assert self._fd is not None
                fd = self._fd
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise DeliveryError(f"file: cannot open {self.path}: {exc}", transient=True) from exc
            try:
                start = self._catch_up(fd)
                fresh: dict[str, bytes] = {}
                for event_id, line in batch:
                    if event_id not in self._ids:
                        fresh.setdefault(event_id, line)
                if not fresh:
                    return
                data = b"\n".join([*fresh.values(), b""])  # one copy, ending in a newline
                self._write(fd, start, data)
                for event_id in fresh:
                    self._ids.add(event_id)
                self._end = start + len(data)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _write(self, fd: int, start: int, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
        except OSError as exc:
            os.ftruncate(fd, start)  # no partial line, whatever failed
            raise DeliveryError(f"file: cannot write {self.path}: {exc}", transient=True) from exc

    def _open(self) -> None:
        self._close()
        self._reopen_requested = False
        if self._inode is None:  # first open: one warning if others may read the log
            warn_if_exposed(self.path, GROUP_READABLE)
        make_dirs(os.path.dirname(self.path), GROUP_DIR)
        fd = create_file(self.path, GROUP_READABLE, os.O_RDWR | os.O_APPEND)  # the operators' group reads it
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self._inode:  # a new file (first open, or rotated): scan its tail
            self._inode = (st.st_dev, st.st_ino)
            self._end = -1
        self._fd = fd

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _catch_up(self, fd: int) -> int:
        """Learn the ids of lines appended by others; drop a crashed writer's partial line; return EOF."""
        size = os.fstat(fd).st_size
        if size == self._end:
            return size
        if self._end < 0 or self._end > size:  # never scanned, or truncated under us (copytruncate)
            begin = max(0, size - self.scan_limit_bytes)
            aligned = begin == 0
        else:
            begin, aligned = self._end, True
        complete = self._scan_ids(fd, begin, size, aligned)
        if complete is not None and complete < size:
            logger.warning("file %s: dropping a partial last line (%d bytes)", self.path, size - complete)
            os.ftruncate(fd, complete)
            size = complete
        self._end = size
        return size

    def _scan_ids(self, fd: int, begin: int, end: int, aligned: bool) -> int | None:
        """Add the ids of complete lines in [begin, end); the offset after the last one (None: unknown)."""
        offset, pending, complete = begin, b"", begin if aligned else None
        while offset < end:
            chunk = os.pread(fd, min(_READ_CHUNK, end - offset), offset)
            if not chunk:
                break
            offset += len(chunk)
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if not aligned and lines:  # began mid-line: the first piece is a line's tail
                lines.pop(0)
                aligned = True
            for line in lines:
                self._learn(line)
            if aligned:
                complete = offset - len(pending)
        return complete

    def _learn(self, line: bytes) -> None:
        if line.startswith(_ID_PREFIX):
            close = line.find(b'"', len(_ID_PREFIX))
            raw = line[len(_ID_PREFIX) : close]
            if close > 0 and b"\\" not in raw:
                self._ids.add(raw.decode("utf-8", "replace"))
                return
        try:
            self._ids.add(_id_decoder.decode(line).id)
        except msgspec.DecodeError:
            pass  # not an event line
