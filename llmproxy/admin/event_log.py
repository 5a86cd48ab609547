"""Bounded reads of the JSONL event log for the Events page: pages of summaries, filtered, newest first,
and one event in full by its byte offset.

The file is read backward from an offset a chunk at a time, in a worker thread, never more than
``SCAN_BUDGET`` bytes per answer and never a line longer than ``MAX_LINE`` held in memory (such a line
is skipped). A page names the offset to continue from (``older``) when it stopped early; the live tail
asks for what was appended after its ``cursor``. A summary's fields are decoded alone (headers and
bodies skipped by the decoder); a line is decoded at all only when the raw bytes could match the filter.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Annotated, BinaryIO

import msgspec
from msgspec import Meta, Struct

from llmproxy.events.model import Event, decode_event
from llmproxy.manage.decoding import PATTERN_MEANINGS
from llmproxy.manage.schemas import Uuid

__all__ = (
    "EventFilter",
    "EventMatcher",
    "EventPage",
    "EventSummary",
    "is_text",
    "read_event",
    "read_page",
)

MAX_EVENTS = 50
CHUNK = 256 * 1024
SCAN_BUDGET = 16 * 1024 * 1024  # bytes read for one answer; the page then says where to go on
MAX_LINE = 4 * 1024 * 1024  # an event carries up to ~320 KiB of bodies (more as base64): ample room
STATUS_PATTERN = r"^[1-5]([0-9][0-9]|[xX][xX])$"
PATTERN_MEANINGS[STATUS_PATTERN] = "a status code like 429 or a class like 5xx"


class EventFilter(Struct, kw_only=True, forbid_unknown_fields=True):
    """Query of ``GET /admin/api/events``: filters, and where to read (``after``: appended since that
    offset, the live tail; ``before``: older than that offset, the next page; neither: the newest)."""

    project_id: Uuid | None = None
    token_id: Uuid | None = None
    status: Annotated[str, Meta(pattern=STATUS_PATTERN)] | None = None
    model: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    q: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    after: Annotated[int, Meta(ge=0, le=2**62)] | None = None
    before: Annotated[int, Meta(ge=0, le=2**62)] | None = None


class _Usage(Struct):
    total_tokens: int | None = None


class _Line(Struct):
    """The fields of an event line a summary needs; every other field is skipped unparsed."""

    id: str = ""
    started_at: str = ""
    status: int = 0
    method: str = ""
    path: str = ""
    model: str | None = None
    duration_ms: float | None = None
    usage: _Usage | None = None
    project_id: str = ""
    token_id: str = ""


class _Text(Struct):
    """The fields the text filter looks in."""

    request_id: str = ""
    path: str = ""
    query: str = ""
    model: str | None = None
    error: str | None = None
    request_body: str = ""
    response_body: str = ""
    body_encoding: str = "utf-8"


class EventSummary(Struct, kw_only=True):
    """One proxied request as the Events page lists it; ``at`` and ``id`` name its detail page."""

    at: int
    id: str
    time: str
    status: int
    method: str
    path: str
    model: str | None
    duration_ms: float | None
    tokens: int | None
    project_id: str
    token_id: str


class EventPage(Struct, kw_only=True):
    """Answer of ``GET /admin/api/events``: newest first. ``cursor`` goes in the next poll's ``after``;
    ``older`` in ``before`` for the next page (null: the start of the log was reached)."""

    configured: bool
    events: list[EventSummary]
    cursor: int
    older: int | None = None
    scanned: int = 0


_decode_line = msgspec.json.Decoder(_Line).decode
_decode_text = msgspec.json.Decoder(_Text).decode


def _ascii_lower(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape").lower()  # bytes.lower(): ASCII letters only


def is_text(value: str) -> bool:
    """Whether ``value`` encodes as UTF-8 (a query may decode to lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class EventMatcher:
    """A filter made ready for many lines: raw needles first (cheap), then the decoded fields."""

    def __init__(self, query: EventFilter) -> None:
        self._project = query.project_id.lower() if query.project_id else None
        self._token = query.token_id.lower() if query.token_id else None
        self._model = query.model
        self._status = query.status.lower() if query.status else None
        # bytes that must be in the raw line: each value as the JSON encoder writes it
        self._needles = [
            msgspec.json.encode(value) for value in (self._project, self._token, self._model) if value
        ]
        self._text = _ascii_lower(query.q) if query.q else None
        # the text as it appears inside a JSON string (escapes included), lowered the same way
        self._raw_text = msgspec.json.encode(query.q)[1:-1].lower() if query.q else None

    def summary(self, at: int, line: bytes) -> EventSummary | None:
        """The line's summary when it is an event that matches, else None."""
        if not all(needle in line for needle in self._needles):
            return None
        if self._raw_text is not None and self._raw_text not in line.lower():
            return None
        try:
            e = _decode_line(line)
        except msgspec.DecodeError:  # a line that is not an event: skipped, not fatal
            return None
        if not self._fields_match(e) or not self._text_matches(line):
            return None
        return EventSummary(
            at=at,
            id=e.id,
            time=e.started_at,
            status=e.status,
            method=e.method,
            path=e.path,
            model=e.model,
            duration_ms=e.duration_ms,
            tokens=e.usage.total_tokens if e.usage else None,
            project_id=e.project_id,
            token_id=e.token_id,
        )

    def _fields_match(self, e: _Line) -> bool:
        if self._project is not None and e.project_id.lower() != self._project:
            return False
        if self._token is not None and e.token_id.lower() != self._token:
            return False
        if self._model is not None and e.model != self._model:
            return False
        status = self._status
        if status is not None:
            wanted = str(e.status)
            return wanted[0] == status[0] if status.endswith("xx") else wanted == status
        return True

    def _text_matches(self, line: bytes) -> bool:
        if self._text is None:
            return True
        try:
            t = _decode_text(line)
        except msgspec.DecodeError:
            return False
        fields = [t.request_id, t.path, t.query, t.model or "", t.error or ""]
        if t.body_encoding == "utf-8":
            fields += [t.request_body, t.response_body]
        return any(self._text in _ascii_lower(field) for field in fields)


class _Scan:
    """Where a backward scan got to: bytes read, the end of the newest whole line, where to go on."""

    def __init__(self) -> None:
        self.read = 0
        self.newest_end: int | None = None
        self.resume: int | None = None


def _lines_backward(f: BinaryIO, end: int, floor: int, scan: _Scan) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of the whole lines in [floor, end), newest first. Bytes after the last newline
    before ``end`` are a line still being written (or a part of one) and are left out."""
    low = floor - 1 if floor > 0 else 0  # from the byte before ``floor``: does a line begin there?
    pos = end
    newline: int | None = None  # the newline that ends the line being put together
    pending: list[bytes] = []  # its pieces read so far, newest first
    size = 0
    oversized = False
    while pos > low:
        if scan.read >= SCAN_BUDGET:
            scan.resume = newline + 1 if newline is not None else pos
            return
        start = max(low, pos - CHUNK)
        f.seek(start)
        chunk = f.read(pos - start)
        if len(chunk) != pos - start:  # truncated while being read: what is left is another log
            break
        scan.read += len(chunk)
        i = len(chunk)
        while (nl := chunk.rfind(b"\n", 0, i)) >= 0:
            at = start + nl
            if newline is None:
                scan.newest_end = at + 1
            elif not oversized and size + i - nl - 1 <= MAX_LINE:
                line = chunk[nl + 1 : i] + b"".join(reversed(pending))
                if line.strip():
                    scan.resume = at + 1
                    yield at + 1, line
            pending, size, oversized, newline, i = [], 0, False, at, nl
        if newline is not None and not oversized:
            size += i
            oversized = size > MAX_LINE
            if oversized:
                pending = []
            else:
                pending.append(chunk[:i])
        pos = start
    scan.resume = None  # nothing older in this range
    if pos == 0 and floor == 0 and newline is not None and not oversized:
        line = b"".join(reversed(pending))
        if line.strip():
            yield 0, line


def _read_page(path: str, matcher: EventMatcher, after: int | None, before: int | None) -> EventPage:
    try:
        f = open(path, "rb")  # noqa: SIM115 - one handle for the size and the reads, closed below
    except FileNotFoundError:
        return EventPage(configured=True, events=[], cursor=0)
    with f:
        size = os.fstat(f.fileno()).st_size
        floor = after if after is not None and after <= size else 0  # past the end: rotated, start over
        end = size if before is None else min(before, size)
        scan = _Scan()
        events: list[EventSummary] = []
        for at, line in _lines_backward(f, end, floor, scan):
            found = matcher.summary(at, line.rstrip(b"\r"))
            if found is not None:
                events.append(found)
                if len(events) >= MAX_EVENTS:
                    break
        cursor = scan.newest_end if scan.newest_end is not None else floor
        older = None if after is not None else scan.resume
        return EventPage(configured=True, events=events, cursor=cursor, older=older, scanned=scan.read)


async def read_page(
    path: str, matcher: EventMatcher, *, after: int | None = None, before: int | None = None
) -> EventPage:
    """Up to 50 matching events, newest first: appended after byte ``after`` (the live tail), older
    than byte ``before`` (the next page), or the newest of the log."""
    return await asyncio.to_thread(_read_page, path, matcher, after, before)


def _read_event(path: str, at: int, event_id: str) -> Event | None:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return None
    with f:
        if at > 0:
            f.seek(at - 1)
            if f.read(1) != b"\n":  # not where a line begins: the log changed since the link was made
                return None
        else:
            f.seek(0)
        pieces: list[bytes] = []
        size = 0
        while size <= MAX_LINE:
            chunk = f.read(CHUNK)
            end = chunk.find(b"\n")
            pieces.append(chunk if end < 0 else chunk[:end])
            size += len(pieces[-1])
            if end >= 0 or not chunk:
                break
        if size > MAX_LINE:
            return None
    try:
        event = decode_event(b"".join(pieces))
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return event if event.id == event_id else None


async def read_event(path: str, at: int, event_id: str) -> Event | None:
    """The event whose line begins at byte ``at``, if it is still the one with ``event_id`` (a rotated
    log puts another line there); None when it is not."""
    return await asyncio.to_thread(_read_event, path, at, event_id)
