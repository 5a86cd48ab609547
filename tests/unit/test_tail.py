"""`llm-proxy events tail`: readable lines, filters, malformed lines skipped, following across rotation."""

from __future__ import annotations

import argparse
import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from llmproxy.events.model import Event, Usage, encode_event
from llmproxy.tail import EventLogFollower, add_arguments, format_event, run, tail_events


def make_event(**changes: Any) -> Event:
    fields: dict[str, Any] = {
        "id": "6f1c2a4e-0000-4000-8000-000000000001",
        "request_id": "req-1",
        "project_id": "abcd1234-5678-4000-8000-000000000000",
        "token_id": "tok-1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "started_at": "2026-11-23T09:01:37.123456Z",
        "duration_ms": 812.4,
        "ttfb_ms": 95.1,
        "stream": True,
        "model": "gpt-4o-mini",
        "usage": Usage(12, 30, 42),
        "usage_source": "response",
    }
    return Event(**(fields | changes))


def line(**changes: Any) -> bytes:
    return encode_event(make_event(**changes)) + b"\n"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def tail(path: Path, *argv: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    follower = EventLogFollower(str(path))
    try:
        tail_events(follower, parse("--file", str(path), *argv), out, err)
    finally:
        follower.close()  # as run() does; an open log left to the GC is a ResourceWarning
    return out.getvalue(), err.getvalue()


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.01)


# --- formatting ----------------------------------------------------------------------------------


def test_an_event_reads_as_one_line() -> None:
    assert format_event(make_event()) == (
        "2026-11-23T09:01:37Z  200  POST /v1/chat/completions  gpt-4o-mini  812ms  ttfb 95ms  42 tok  stream"
        "  proj=abcd1234 req=req-1"
    )


def test_estimated_usage_query_and_error_show_and_missing_parts_are_left_out() -> None:
    event = make_event(
        status=504, query="a=1", stream=False, model=None, ttfb_ms=None, usage=Usage(5, 0, 5),
        usage_source="estimated", error="upstream_timeout",
    )  # fmt: skip
    assert format_event(event) == (
        "2026-11-23T09:01:37Z  504  POST /v1/chat/completions?a=1  -  812ms  ~5 tok  error=upstream_timeout"
        "  proj=abcd1234 req=req-1"
    )
    assert "tok" not in format_event(make_event(usage=None, usage_source=None))


# --- reading and filtering -----------------------------------------------------------------------


def test_every_event_is_printed_and_a_malformed_line_is_skipped_with_a_note(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(line(request_id="a") + b"{not json\n\n" + b'{"id":"x"}\n' + line(request_id="b"))
    out, err = tail(log)
    assert [row.rsplit("req=", 1)[1] for row in out.splitlines()] == ["a", "b"]
    assert "skipping a malformed line of" in err and err.endswith(': b\'{"id":"x"}\'\n')
    assert err.count("\n") == 2 and "b'{not json'" in err


def test_json_prints_the_raw_lines(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(line(request_id="a") + line(request_id="b"))
    assert tail(log, "--json")[0].encode() == log.read_bytes()


def test_a_last_line_without_newline_is_printed(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(line(request_id="a")[:-1])
    assert tail(log)[0].endswith("req=a\n")


def test_project_filter_takes_the_full_id_or_its_prefix(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(
        line(request_id="a", project_id="abcd1234-x") + line(request_id="b", project_id="ffff0000-y")
    )
    assert tail(log, "--project", "abcd1234")[0].count("\n") == 1
    assert "req=b" in tail(log, "--project", "ffff0000-y")[0]
    assert tail(log, "--project", "zzz")[0] == ""


def test_status_filter_takes_a_code_or_a_class(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"".join(line(request_id=str(s), status=s) for s in (200, 429, 502, 504)))
    assert [r.rsplit("req=", 1)[1] for r in tail(log, "--status", "429")[0].splitlines()] == ["429"]
    assert [r.rsplit("req=", 1)[1] for r in tail(log, "--status", "5xx")[0].splitlines()] == ["502", "504"]


@pytest.mark.parametrize("status", ["abc", "99", "6xx", "2x"])
def test_a_bad_status_is_an_argument_error(status: str) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("--status", status)
    assert exc.value.code == 2


def test_no_log_path_is_an_error_and_a_missing_log_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(parse()) == 2
    assert "FILE_EVENT_LOG" in capsys.readouterr().err
    assert run(parse("--file", str(tmp_path / "none.jsonl"))) == 1
    assert "no event log at" in capsys.readouterr().err


def test_run_prints_to_stdout_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(line())
    assert run(parse("--file", str(log))) == 0
    assert capsys.readouterr().out == format_event(make_event()) + "\n"


# --- following -----------------------------------------------------------------------------------


def test_follower_holds_a_partial_line_until_its_newline_arrives(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b'{"a":1}\n{"b"')
    follower = EventLogFollower(str(log))
    assert follower.read_lines() == [b'{"a":1}']
    with log.open("ab") as f:
        f.write(b":2}\n")
    assert follower.read_lines() == [b'{"b":2}']
    follower.close()


def test_follower_waits_for_a_missing_file(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    follower = EventLogFollower(str(log))
    assert follower.read_lines() == []
    log.write_bytes(b"1\n")
    assert follower.read_lines() == [b"1"]
    follower.close()


def test_follower_reads_the_rest_of_a_rotated_file_then_the_new_one(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    writer = log.open("ab", buffering=0)
    writer.write(b"1\n")
    follower = EventLogFollower(str(log))
    assert follower.read_lines() == [b"1"]
    os.rename(log, tmp_path / "events.jsonl.1")  # logrotate
    writer.write(b"2\n")  # the writer has not reopened yet
    assert follower.read_lines() == [b"2"]
    writer.close()
    log.write_bytes(b"3\n")  # reopened after SIGHUP: a new file at the path
    assert follower.read_lines() == [b"3"]
    follower.close()


def test_follower_starts_over_when_the_file_is_truncated_in_place(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"1\n2\n")
    follower = EventLogFollower(str(log))
    assert follower.read_lines() == [b"1", b"2"]
    with log.open("r+b") as f:  # copytruncate
        f.truncate(0)
    with log.open("ab") as f:
        f.write(b"3\n")
    assert follower.read_lines() == [b"3"]
    follower.close()


class _Lines(io.StringIO):
    """A thread-safe enough stdout for one writer and one reader."""

    def lines(self) -> list[str]:
        return self.getvalue().splitlines()


def test_follow_prints_events_appended_later_until_stopped(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(line(request_id="old"))
    out, err, stop = _Lines(), io.StringIO(), threading.Event()
    follower = EventLogFollower(str(log))
    args = parse("--file", str(log), "--follow", "--status", "200")
    worker = threading.Thread(
        target=tail_events,
        args=(follower, args, out, err),
        kwargs={"should_stop": stop.is_set, "interval": 0.01},
    )
    worker.start()
    try:
        wait_for(lambda: len(out.lines()) == 1)
        with log.open("ab") as f:
            f.write(line(request_id="skipped", status=500) + line(request_id="new"))
        wait_for(lambda: len(out.lines()) == 2)
        os.replace(log, tmp_path / "old.jsonl")
        log.write_bytes(line(request_id="rotated"))
        wait_for(lambda: len(out.lines()) == 3)
    finally:
        stop.set()
        worker.join(timeout=10)
        follower.close()
    assert not worker.is_alive()
    assert [r.rsplit("req=", 1)[1] for r in out.lines()] == ["old", "new", "rotated"]


def test_the_last_n_events_are_found_looking_back_across_blocks(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    padding = "x" * 3000  # lines far longer than a block's share: they straddle the 64 KiB reads
    log.write_bytes(
        b"".join(line(request_id=f"{i}-{padding}", status=500 if i % 3 else 200) for i in range(200))
    )
    out, _ = tail(log, "-n", "4", "--status", "200")
    shown = [row.rsplit("req=", 1)[1].split("-")[0] for row in out.splitlines()]
    assert shown == ["189", "192", "195", "198"]
    out, _ = tail(log, "--from-start")
    assert out.count("\n") == 200


def test_following_from_the_end_waits_for_an_unfinished_last_line(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    complete, unfinished = line(request_id="a"), line(request_id="b")
    log.write_bytes(complete + unfinished[:20])
    follower = EventLogFollower(str(log))
    assert follower.start_at_end(complete_only=True)
    assert list(follower.lines_before_start()) == [complete[:-1]]
    with log.open("ab") as f:
        f.write(unfinished[20:])
    assert follower.read_lines() == [unfinished[:-1]]
    follower.close()


def test_follower_still_reads_the_old_file_after_the_new_one_appeared(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    writer = log.open("ab", buffering=0)
    writer.write(b"1\n")
    follower = EventLogFollower(str(log))
    assert follower.read_lines() == [b"1"]
    os.rename(log, tmp_path / "events.jsonl.1")
    log.touch()  # logrotate's `create`, before the writer's SIGHUP
    assert follower.read_lines() == []
    writer.write(b"2\n")
    writer.close()
    log.write_bytes(b"3\n")
    assert follower.read_lines() == [b"2", b"3"]
    follower.close()
