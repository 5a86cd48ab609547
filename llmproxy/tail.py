"""`llm-proxy events tail`: the JSONL event log, one readable line per event; like `tail -F`, the last
10 events (`-n N`; `--from-start` for all), then, with `--follow`, the ones appended after them.

A plain file reader (no event loop): follows appends, and reopens the path when the log is rotated,
recreated or truncated, so it keeps working across logrotate and the file dispatcher's SIGHUP reopen.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, BinaryIO

import msgspec

from llmproxy.events.model import Event, decode_event

__all__ = ("EventLogFollower", "StatusFilter", "add_arguments", "format_event", "run", "tail_events")

POLL_INTERVAL = 0.2  # seconds between looks at a followed file
DEFAULT_LINES = 10
RETIRED_GRACE = 5.0  # seconds a rotated-away file is still read: its writer appends until its SIGHUP
_BLOCK = 1 << 16  # bytes read at a time when looking back from the end


class StatusFilter(msgspec.Struct, frozen=True):
    """`--status 429` matches one code, `--status 5xx` a whole class."""

    code: int | None = None
    status_class: int | None = None

    def matches(self, status: int) -> bool:
        return status == self.code if self.code is not None else status // 100 == self.status_class


def _status_filter(text: str) -> StatusFilter:
    text = text.strip().lower()
    if len(text) == 3 and text.endswith("xx") and text[0] in "12345":
        return StatusFilter(status_class=int(text[0]))
    if text.isdigit() and 100 <= int(text) <= 599:
        return StatusFilter(code=int(text))
    raise argparse.ArgumentTypeError(f"invalid status {text!r}: use a code like 429 or a class like 5xx")


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of events, got {text!r}")
    return int(text)


EPILOG = """\
An event is a request the proxy forwarded upstream, whatever the upstream answered (200, 400,
500, ...). Requests the proxy refused itself (401 for a bad, revoked or expired token, 429 for a
rate limit or a used-up quota, 403, 404 ...) never reached the upstream and are not events: they
are in the access log (ACCESS_LOG). Nor are answers served from the response cache.

examples:
  llm-proxy events tail --follow                      the last 10 events, then new ones as they come
  llm-proxy events tail --status 5xx -n 50            the last 50 upstream errors
  llm-proxy events tail --from-start --status 500 --json > errors.jsonl
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--file", metavar="PATH", help="the JSONL event log (default: FILE_EVENT_LOG)")
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing events as they are appended, across rotation",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "-n",
        "--lines",
        metavar="N",
        type=_count,
        default=DEFAULT_LINES,
        help=f"start with the last N matching events (default {DEFAULT_LINES})",
    )
    start.add_argument("--from-start", action="store_true", help="start with the first event of the log")
    parser.add_argument(
        "--project", metavar="ID", help="only this project (the full id, or its first characters)"
    )
    parser.add_argument(
        "--status", metavar="CODE", type=_status_filter, help="only this upstream status: 500, or 5xx"
    )
    parser.add_argument("--json", action="store_true", help="print each matching event's raw JSON line")


def format_event(event: Event) -> str:
    """`2026-11-23T09:01:37Z  200  POST /v1/chat/completions  gpt-4o-mini  812ms  ttfb 95ms  42 tok  …`"""
    target = f"{event.path}?{event.query}" if event.query else event.path
    parts = [event.started_at[:19] + "Z", str(event.status), f"{event.method} {target}", event.model or "-"]
    parts.append(f"{event.duration_ms:.0f}ms")
    if event.ttfb_ms is not None:
        parts.append(f"ttfb {event.ttfb_ms:.0f}ms")
    if event.usage is not None:
        estimated = "~" if event.usage_source == "estimated" else ""
        parts.append(f"{estimated}{event.usage.total_tokens} tok")
    if event.stream:
        parts.append("stream")
    if event.error:
        parts.append(f"error={event.error}")
    parts.append(f"proj={event.project_id[:8]} req={event.request_id}")
    return "  ".join(parts)


class _OpenLog:
    """One open file of the log, and the unterminated line read from it so far."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        st = os.fstat(file.fileno())
        self.identity = (st.st_dev, st.st_ino)
        self.partial = b""
        self.grew_at = time.monotonic()

    def drain(self) -> list[bytes]:
        data = self.file.read()
        if data:
            self.grew_at = time.monotonic()
        head, newline, self.partial = (self.partial + data).rpartition(b"\n")
        return [line.rstrip(b"\r") for line in head.split(b"\n") if line.strip()] if newline else []


def _lines_backwards(fd: int, end: int) -> Iterator[bytes]:
    """The non-blank lines of the file's first ``end`` bytes, last first, read a block at a time."""
    carry = b""
    while end > 0:
        begin = max(0, end - _BLOCK)
        pieces = (os.pread(fd, end - begin, begin) + carry).split(b"\n")
        carry = pieces.pop(0) if begin > 0 else b""  # may begin before this block
        end = begin
        yield from (piece.rstrip(b"\r") for piece in reversed(pieces) if piece.strip())


def _after_last_newline(fd: int, size: int) -> int:
    end = size
    while end > 0:
        begin = max(0, end - _BLOCK)
        found = os.pread(fd, end - begin, begin).rfind(b"\n")
        if found >= 0:
            return begin + found + 1
        end = begin
    return 0


class EventLogFollower:
    """Complete lines appended to a path; reopens it when it is rotated, recreated or truncated.

    A file rotated away is still read until it has not grown for RETIRED_GRACE seconds: its writers
    append to it until their SIGHUP, even after logrotate `create`d the new one. Errors opening the
    path other than its absence (permissions, a directory) are raised as OSError."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._current: _OpenLog | None = None
        self._retired: list[_OpenLog] = []
        self._start = 0

    def close(self) -> None:
        for log in (*self._retired, self._current):
            if log is not None:
                log.file.close()
        self._current, self._retired = None, []

    def start_at_end(self, *, complete_only: bool) -> bool:
        """Open the log positioned at its end, or with ``complete_only`` after its last newline (an
        unterminated last line is then read once finished); False if there is no log yet."""
        if not self._open():
            return False
        assert self._current is not None
        fd = self._current.file.fileno()
        size = os.fstat(fd).st_size
        self._start = _after_last_newline(fd, size) if complete_only else size
        self._current.file.seek(self._start)
        return True

    def lines_before_start(self) -> Iterator[bytes]:
        """The lines before the position ``start_at_end`` chose, last first."""
        if self._current is not None:
            yield from _lines_backwards(self._current.file.fileno(), self._start)

    def read_lines(self, *, final: bool = False) -> list[bytes]:
        """Lines complete so far (without newline); with `final`, an unterminated last line too."""
        lines = self._drain_retired()
        if self._current is None and not self._open():
            return lines
        current = self._current
        assert current is not None
        lines += current.drain()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:  # mid-rotation: keep reading the old file until a new one appears
            st = None
        if st is not None and (st.st_dev, st.st_ino) != current.identity:
            self._retired.append(current)  # its writers may append until their SIGHUP
            self._current = None
            if (opened := self._open()) is not None:
                lines += opened.drain()
        elif st is not None and st.st_size < current.file.tell():
            current.file.seek(0)  # truncated in place (copytruncate)
            current.partial = b""
            lines += current.drain()
        if final and self._current is not None and self._current.partial:
            lines.append(self._current.partial)
            self._current.partial = b""
        return lines

    def _drain_retired(self) -> list[bytes]:
        lines: list[bytes] = []
        for log in list(self._retired):
            lines += log.drain()
            if time.monotonic() - log.grew_at >= RETIRED_GRACE:
                log.file.close()  # a crashed writer's half line stays in the old file
                self._retired.remove(log)
        return lines

    def _open(self) -> _OpenLog | None:
        try:
            file = open(self.path, "rb")  # noqa: SIM115 - held open across calls, closed in close()
        except FileNotFoundError:
            return None
        self._current = _OpenLog(file)
        return self._current


def _decode(raw: bytes) -> Event | Exception:
    try:
        return decode_event(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return exc


def _passes(event: Event, args: argparse.Namespace) -> bool:
    if args.project and not event.project_id.startswith(args.project):
        return False
    return args.status is None or args.status.matches(event.status)


def _last_matching(
    follower: EventLogFollower, args: argparse.Namespace
) -> list[tuple[bytes, Event | Exception]]:
    """The last `args.lines` matching events before the start, newest first, with the malformed lines
    met on the way (they are named, not counted)."""
    recent: list[tuple[bytes, Event | Exception]] = []
    wanted = args.lines
    for raw in follower.lines_before_start() if wanted else ():
        decoded = _decode(raw)
        if isinstance(decoded, Exception) or _passes(decoded, args):
            recent.append((raw, decoded))
            wanted -= not isinstance(decoded, Exception)
            if not wanted:
                break
    return recent


def tail_events(
    follower: EventLogFollower,
    args: argparse.Namespace,
    out: IO[str],
    err: IO[str],
    *,
    should_stop: Callable[[], bool] = lambda: False,
    interval: float = POLL_INTERVAL,
) -> None:
    """Print the last `args.lines` matching events (every one with `args.from_start`), then with
    `args.follow` those appended later, until `should_stop()` or Ctrl-C. Malformed lines are named
    on stderr, in the order of the file."""

    def show(raw: bytes, decoded: Event | Exception) -> None:
        if isinstance(decoded, Exception):
            err.write(f"llm-proxy: skipping a malformed line of {follower.path} ({decoded}): {raw[:40]!r}\n")
        elif _passes(decoded, args):
            out.write((raw.decode("utf-8", "replace") if args.json else format_event(decoded)) + "\n")

    if not args.from_start and follower.start_at_end(complete_only=args.follow):
        for raw, decoded in reversed(_last_matching(follower, args)):
            show(raw, decoded)
        out.flush()
    while True:
        lines = follower.read_lines(final=not args.follow)
        for raw in lines:
            show(raw, _decode(raw))
        if not args.follow or should_stop():
            return
        if lines:
            out.flush()
        else:
            time.sleep(interval)


def _missing(path: str) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:  # there, or not, but unreadable: opening it says why
        pass
    return False


def run(args: argparse.Namespace) -> int:
    path = args.file
    if not path:
        sys.stderr.write("llm-proxy: no event log: pass --file PATH or set FILE_EVENT_LOG\n")
        return 2
    if not args.follow and _missing(path):
        sys.stderr.write(f"llm-proxy: no event log at {path}\n")
        return 1
    follower = EventLogFollower(path)
    try:
        tail_events(follower, args, sys.stdout, sys.stderr)
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `| head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # unreadable (permissions: docs/deploy-ec2.md §7), a directory, ...
        sys.stderr.write(f"llm-proxy: cannot read the event log {path}: {exc.strerror or exc}\n")
        return 1
    finally:
        follower.close()
    return 0
