"""`llm-proxy events tail`: the JSONL event log, one readable line per event, optionally followed like `tail -F`.

A plain file reader (no event loop): follows appends, and reopens the path when the log is rotated,
recreated or truncated, so it keeps working across the file dispatcher's SIGHUP reopen.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import IO, BinaryIO

import msgspec

from llmproxy.events.model import Event, decode_event

__all__ = ("EventLogFollower", "StatusFilter", "add_arguments", "format_event", "run", "tail_events")

POLL_INTERVAL = 0.2  # seconds between looks at a followed file


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", metavar="PATH", help="the JSONL event log (default: FILE_EVENT_LOG)")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing events as they are appended"
    )
    parser.add_argument(
        "--project", metavar="ID", help="only this project (the full id, or its first characters)"
    )
    parser.add_argument("--status", metavar="CODE", type=_status_filter, help="only this status: 429, or 5xx")
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


class EventLogFollower:
    """Complete lines appended to a path; reopens it when it is rotated, recreated or truncated."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._identity: tuple[int, int] = (0, 0)
        self._partial = b""

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read_lines(self, *, final: bool = False) -> list[bytes]:
        """Lines complete so far (without newline); with `final`, an unterminated last line too."""
        if self._file is None and not self._open():
            return []
        lines = self._drain()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:  # mid-rotation: keep reading the old file until a new one appears
            st = None
        if st is not None and (st.st_dev, st.st_ino) != self._identity:
            self._partial = b""  # a crashed writer's half line stays in the old file
            self.close()
            if self._open():
                lines += self._drain()
        elif st is not None and self._file is not None and st.st_size < self._file.tell():
            self._file.seek(0)  # truncated in place (copytruncate)
            self._partial = b""
            lines += self._drain()
        if final and self._partial:
            lines.append(self._partial)
            self._partial = b""
        return lines

    def _open(self) -> bool:
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - held open across calls, closed in close()
        except FileNotFoundError:
            return False
        st = os.fstat(self._file.fileno())
        self._identity = (st.st_dev, st.st_ino)
        return True

    def _drain(self) -> list[bytes]:
        assert self._file is not None
        data = self._partial + self._file.read()
        head, newline, self._partial = data.rpartition(b"\n")
        return [line.rstrip(b"\r") for line in head.split(b"\n") if line.strip()] if newline else []


def tail_events(
    follower: EventLogFollower,
    args: argparse.Namespace,
    out: IO[str],
    err: IO[str],
    *,
    should_stop: Callable[[], bool] = lambda: False,
    interval: float = POLL_INTERVAL,
) -> None:
    """Print matching events; with `args.follow`, keep going until `should_stop()` or Ctrl-C."""
    seen = 0
    while True:
        lines = follower.read_lines(final=not args.follow)
        for raw in lines:
            seen += 1
            try:
                event = decode_event(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                err.write(f"llm-proxy: skipping malformed line {seen} of {follower.path}: {exc}\n")
                continue
            if args.project and not event.project_id.startswith(args.project):
                continue
            if args.status is not None and not args.status.matches(event.status):
                continue
            out.write((raw.decode("utf-8", "replace") if args.json else format_event(event)) + "\n")
        if not args.follow or should_stop():
            return
        if lines:
            out.flush()
        else:
            time.sleep(interval)


def run(args: argparse.Namespace) -> int:
    path = args.file
    if not path:
        sys.stderr.write("llm-proxy: no event log: pass --file PATH or set FILE_EVENT_LOG\n")
        return 2
    if not args.follow and not os.path.exists(path):
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
    finally:
        follower.close()
    return 0
