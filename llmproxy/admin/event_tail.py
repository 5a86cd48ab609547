"""The newest events of the JSONL event log, as summaries: what the admin UI's live tail shows.

Only the end of the file is read (64 KiB, more only while it holds too few whole lines, never past
a bound), in a worker thread. Each line is decoded into the summary fields alone: headers and bodies
are skipped by the decoder and never leave this module. The cursor is the byte offset just past the
last whole line, so the next poll returns only what was appended since.
"""

from __future__ import annotations

import asyncio
import os

import msgspec

__all__ = ("EventSummary", "EventTail", "tail_events")

MAX_EVENTS = 50
WINDOW = 64 * 1024
MAX_WINDOW = 4 * 1024 * 1024  # an event carries up to ~320 KiB of bodies: room for a dozen of those


class _Usage(msgspec.Struct):
    total_tokens: int | None = None


class _Line(msgspec.Struct):
    """The fields of an event line that are read; every other field is skipped unparsed."""

    started_at: str = ""
    status: int = 0
    method: str = ""
    path: str = ""
    model: str | None = None
    duration_ms: float | None = None
    usage: _Usage | None = None
    project_id: str = ""


class EventSummary(msgspec.Struct, kw_only=True):
    """One proxied request as the live tail lists it."""

    time: str
    status: int
    method: str
    path: str
    model: str | None
    duration_ms: float | None
    tokens: int | None
    project_id: str


class EventTail(msgspec.Struct, kw_only=True):
    """Answer of ``GET /admin/api/events``: newest first; ``cursor`` goes in the next ``after``."""

    configured: bool
    events: list[EventSummary]
    cursor: int


_decode_line = msgspec.json.Decoder(_Line).decode


def _summary(line: bytes) -> EventSummary | None:
    try:
        e = _decode_line(line)
    except msgspec.DecodeError:  # a line that is not an event: skipped, not fatal
        return None
    return EventSummary(
        time=e.started_at,
        status=e.status,
        method=e.method,
        path=e.path,
        model=e.model,
        duration_ms=e.duration_ms,
        tokens=e.usage.total_tokens if e.usage else None,
        project_id=e.project_id,
    )


def _tail_lines(path: str, after: int, limit: int) -> tuple[list[bytes], int]:
    """The last ``limit`` whole lines that start at or after byte ``after``, and the offset just past
    the last whole line (the next cursor). Blocking: runs in a worker thread."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - one handle for the size and the reads, closed below
    except FileNotFoundError:
        return [], 0
    with f:
        size = os.fstat(f.fileno()).st_size
        if after > size:  # truncated or rotated: start over from the newest
            after = 0
        window = WINDOW
        while True:
            start = max(after, size - window)
            # from the byte before ``start``, to tell whether a line begins at ``start``
            offset = start - 1 if start > after else start
            f.seek(offset)
            data = f.read(size - offset)
            end = data.rfind(b"\n") + 1  # a line still being written is left for the next poll
            first = 0 if offset == start else data.find(b"\n") + 1
            whole = data[first:end] if end > first else b""
            lines = [line for line in whole.split(b"\n") if line.strip()]
            if len(lines) >= limit or start == after or window >= MAX_WINDOW:
                return lines[-limit:], offset + end if end else after
            window *= 4


async def tail_events(path: str, after: int = 0, limit: int = MAX_EVENTS) -> EventTail:
    """The newest events of ``path`` appended after byte ``after``, newest first."""
    return await asyncio.to_thread(_read_tail, path, after, limit)


def _read_tail(path: str, after: int, limit: int) -> EventTail:
    lines, cursor = _tail_lines(path, after, limit)  # decoded here too: big lines stay off the loop
    events = [s for s in map(_summary, reversed(lines)) if s is not None]
    return EventTail(configured=True, events=events, cursor=cursor)
