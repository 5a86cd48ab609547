"""Dead letters, the events a backend refused for good: kept aside to be read, replayed or purged.

The in-memory bus writes them to a JSONL file (``DEAD_LETTER_FILE``), Redis Streams to ``<stream>:dead``;
both hold the same fields: the event, the service, the error, the time (and how often it was delivered).
The file may be appended to by the server while ``llm-proxy events dead`` rewrites it: both hold an
exclusive flock, and the rewrite replaces the file by rename, so an appender that waited on the old file
checks its inode and opens the new one.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import time
from collections.abc import Collection
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, cast

import msgspec

from llmproxy.events.redis_streams import EVENT_FIELD, ID_FIELD, SERVICE_FIELD
from llmproxy.redis_keys import dead_letter_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ("DeadLetter", "DeadLetterFile", "DeadLetterStream", "DeadLetters", "event_id", "new_letter")

FILE_MODE = 0o640  # like the event log: the deploy doc's llm-proxy group reads it


class DeadLetter(msgspec.Struct, kw_only=True):
    """One refused event. ``id``: the stream entry id (Redis) or ``<ms>-<random>`` (file)."""

    id: str
    time: str  # RFC 3339, UTC
    service: str
    error: str
    deliveries: int = 1
    original_id: str = ""  # the entry id it had on the bus
    event: msgspec.Raw = msgspec.Raw(b"null")  # the event as published (JSON), or what the entry held


class _EventId(msgspec.Struct):
    id: str = ""


_decode_letter = msgspec.json.Decoder(DeadLetter)
_decode_event_id = msgspec.json.Decoder(_EventId)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _as_json(raw: bytes) -> msgspec.Raw:
    """``raw`` as a JSON value: itself when it is one, else a JSON string of its text."""
    try:
        msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return msgspec.Raw(msgspec.json.encode(raw.decode(errors="replace")))
    return msgspec.Raw(raw)


def new_letter(
    raw: bytes, service: str, error: str, *, deliveries: int = 1, original_id: str = ""
) -> DeadLetter:
    """A dead letter for the file, with a fresh id and the time now."""
    return DeadLetter(
        id=f"{int(time.time() * 1000)}-{secrets.token_hex(3)}",
        time=_now(),
        service=service,
        error=error,
        deliveries=deliveries,
        original_id=original_id,
        event=_as_json(raw),
    )


def event_id(letter: DeadLetter) -> str:
    """The id of the event a letter holds ("" when it holds no event of ours)."""
    try:
        return _decode_event_id.decode(letter.event).id
    except msgspec.DecodeError:
        return ""


class DeadLetters(Protocol):
    """Where one bus keeps its dead letters; ``where`` names it in messages (a path or a Redis key)."""

    where: str

    async def entries(self, newest: int | None = None) -> list[DeadLetter]:
        """Oldest first; only the last ``newest`` when given."""

    async def count(self) -> int: ...

    async def remove(self, ids: Collection[str]) -> int:
        """Delete these letters; how many there were."""


class DeadLetterFile:
    """The JSONL file of the in-memory bus: one ``DeadLetter`` per line."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.where = path

    # --- blocking primitives (run in a thread by the async methods) --------------------------------

    def append(self, letters: list[DeadLetter]) -> None:
        """Add lines under the lock (creating the file, its directory and mode 0640 if needed)."""
        data = b"".join(msgspec.json.encode(letter) + b"\n" for letter in letters)
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o750, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if not _same_file(fd, self.path):  # replaced by a rewrite while we waited: open the new one
                    continue
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                return
            finally:
                os.close(fd)

    def read(self) -> list[DeadLetter]:
        try:
            with open(self.path, "rb") as f:
                return _decoded(f.read())
        except FileNotFoundError:
            return []

    def rewrite_without(self, ids: Collection[str] | None) -> int:
        """Drop the letters with these ids (all when None) by writing the rest to a new file and renaming it
        over the old one, under the lock; how many were dropped."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with os.fdopen(os.dup(fd), "rb") as f:
                letters = _decoded(f.read())
            kept = [] if ids is None else [letter for letter in letters if letter.id not in ids]
            dropped = len(letters) - len(kept)
            if dropped:
                temporary = f"{self.path}.{os.getpid()}.tmp"
                with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE), "wb") as out:
                    out.write(b"".join(msgspec.json.encode(letter) + b"\n" for letter in kept))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, self.path)
            return dropped
        finally:
            os.close(fd)

    # --- async surface -----------------------------------------------------------------------------

    async def add(self, letters: list[DeadLetter]) -> None:
        await asyncio.to_thread(self.append, letters)

    async def entries(self, newest: int | None = None) -> list[DeadLetter]:
        letters = await asyncio.to_thread(self.read)
        return letters if newest is None else letters[-newest:] if newest > 0 else []

    async def count(self) -> int:
        return len(await asyncio.to_thread(self.read))

    async def remove(self, ids: Collection[str]) -> int:
        return await asyncio.to_thread(self.rewrite_without, set(ids))

    async def purge(self) -> int:
        return await asyncio.to_thread(self.rewrite_without, None)


def _same_file(fd: int, path: str) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _decoded(data: bytes) -> list[DeadLetter]:
    letters = []
    for line in data.splitlines():
        try:
            letters.append(_decode_letter.decode(line))
        except msgspec.DecodeError:
            continue  # a line cut by a crash, or not ours: never fatal to the reader
    return letters


class DeadLetterStream:
    """``<stream>:dead`` of Redis Streams; replay XADDs an entry back to the stream for its service only."""

    def __init__(self, redis: Redis, stream_key: str, *, max_len: int = 0) -> None:
        self._redis = redis
        self._stream = stream_key
        self._max_len = max_len or None
        self.where = dead_letter_key(stream_key)

    async def entries(self, newest: int | None = None) -> list[DeadLetter]:
        if newest is None:
            rows = await self._redis.xrange(self.where, "-", "+")
        else:
            rows = list(
                reversed(await self._redis.xrevrange(self.where, "+", "-", count=max(newest, 0)) or [])
            )
        # bytes: our connections don't decode replies (redis-py types both decodings as one union)
        entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", rows)
        return [_from_entry(entry_id, fields) for entry_id, fields in entries]

    async def count(self) -> int:
        return int(await self._redis.xlen(self.where))

    async def remove(self, ids: Collection[str]) -> int:
        return int(await self._redis.xdel(self.where, *ids)) if ids else 0

    async def purge(self) -> int:
        pipe = self._redis.pipeline(transaction=True)
        pipe.xlen(self.where)
        pipe.delete(self.where)
        count, _ = await pipe.execute()
        return int(count)

    async def replay(self, letters: list[DeadLetter]) -> int:
        """Put each letter back on the stream addressed to its service, and out of the dead letters, in
        one MULTI/EXEC: other services' consumers skip (and ack) it, so only its own service gets it again."""
        if not letters:
            return 0
        pipe = self._redis.pipeline(transaction=True)
        for letter in letters:
            fields: dict[Any, Any] = {
                EVENT_FIELD: bytes(letter.event),
                ID_FIELD: event_id(letter),
                SERVICE_FIELD: letter.service,
            }
            pipe.xadd(self._stream, fields, maxlen=self._max_len, approximate=True)
        pipe.xdel(self.where, *[letter.id for letter in letters])
        await pipe.execute()
        return len(letters)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _from_entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
    """A ``<stream>:dead`` entry as a DeadLetter: the time is the entry id's milliseconds."""
    ident = _text(entry_id)
    millis = int(ident.partition("-")[0] or 0)
    deliveries = _text(fields.get(b"deliveries"))
    return DeadLetter(
        id=ident,
        time=datetime.fromtimestamp(millis / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        service=_text(fields.get(b"service")),
        error=_text(fields.get(b"error")),
        deliveries=int(deliveries) if deliveries.isdigit() else 1,
        original_id=_text(fields.get(b"original_id")),
        event=_as_json(fields.get(EVENT_FIELD.encode(), b"null")),
    )
