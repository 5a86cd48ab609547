"""The real `llm-proxy events tail --follow` process: follows appends and rotation, exits 0 on Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmproxy.events.model import Event, encode_event

ROOT = Path(__file__).resolve().parents[2]


def line(request_id: str, status: int = 200) -> bytes:
    event = Event(
        id=f"id-{request_id}",
        request_id=request_id,
        project_id="proj-1",
        token_id="tok-1",
        method="POST",
        path="/v1/chat/completions",
        status=status,
        started_at="2026-11-23T09:01:37.123456Z",
        duration_ms=10.0,
    )
    return encode_event(event) + b"\n"


def wait_for_lines(path: Path, count: int, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines()
        if len(lines) >= count:
            return lines
        assert time.monotonic() < deadline, f"expected {count} lines, got {lines!r}"
        time.sleep(0.05)


def test_follow_survives_rotation_and_ctrl_c_exits_0(tmp_path: Path) -> None:
    log, out = tmp_path / "events.jsonl", tmp_path / "out.txt"
    log.write_bytes(line("first"))
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llmproxy",
                "events",
                "tail",
                "--file",
                str(log),
                "--follow",
                "--status",
                "2xx",
            ],
            cwd=ROOT,
            stdout=stdout,
            stderr=subprocess.PIPE,
        )
    try:
        wait_for_lines(out, 1)
        with log.open("ab") as f:
            f.write(line("refused", status=401) + b"garbage\n" + line("second"))
        wait_for_lines(out, 2)
        os.replace(log, tmp_path / "events.jsonl.1")
        log.write_bytes(line("after-rotation"))
        lines = wait_for_lines(out, 3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0
    assert [row.rsplit("req=", 1)[1] for row in lines] == ["first", "second", "after-rotation"]
    assert err.startswith(b"llm-proxy: skipping a malformed line of ") and err.endswith(b": b'garbage'\n")


# root reads every file: without these capabilities it reads only what its owner or mode allow
WITHOUT_OVERRIDE = (
    ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
)


def tail(*argv: str, unprivileged: bool = False) -> subprocess.CompletedProcess[bytes]:
    prefix = WITHOUT_OVERRIDE if unprivileged else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "llmproxy", "events", "tail", *argv],
        cwd=ROOT, capture_output=True, timeout=30,
    )  # fmt: skip


def request_ids(output: bytes) -> list[str]:
    return [row.rsplit("req=", 1)[1] for row in output.decode().splitlines()]


def test_tail_prints_the_last_10_events_or_n_and_from_start_the_whole_log(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"".join(line(str(i), status=500 if i % 2 else 200) for i in range(25)))
    assert request_ids(tail("--file", str(log)).stdout) == [str(i) for i in range(15, 25)]
    assert request_ids(tail("--file", str(log), "-n", "3").stdout) == ["22", "23", "24"]
    assert request_ids(tail("--file", str(log), "--lines", "2", "--status", "500").stdout) == ["21", "23"]
    assert request_ids(tail("--file", str(log), "-n", "0").stdout) == []
    assert request_ids(tail("--file", str(log), "--from-start").stdout) == [str(i) for i in range(25)]
    both = tail("--file", str(log), "--from-start", "-n", "3")
    assert both.returncode == 2 and b"not allowed with" in both.stderr


def test_follow_starts_with_the_last_lines_not_the_whole_log(tmp_path: Path) -> None:
    log, out = tmp_path / "events.jsonl", tmp_path / "out.txt"
    log.write_bytes(b"".join(line(str(i)) for i in range(5000)))  # a day of traffic, say
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmproxy", "events", "tail", "--file", str(log), "--follow", "-n", "2"],
            cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE,
        )  # fmt: skip
    try:
        wait_for_lines(out, 2)
        with log.open("ab") as f:
            f.write(line("new"))
        lines = wait_for_lines(out, 3)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert [row.rsplit("req=", 1)[1] for row in lines] == ["4998", "4999", "new"]


def wait_until_open(pid: int, path: Path, timeout: float = 20.0) -> None:
    """Until process ``pid`` holds ``path`` open (the file now at that path, not one renamed away)."""
    deadline = time.monotonic() + timeout
    while True:
        held = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                held.add(os.readlink(fd))
            except OSError:
                pass  # closed meanwhile
        if str(path) in held:
            return
        assert time.monotonic() < deadline, f"{path} not opened by {pid}: {held}"
        time.sleep(0.02)


def test_follow_keeps_the_lines_written_to_the_old_file_after_logrotate_created_the_new_one(
    tmp_path: Path,
) -> None:
    log, out = tmp_path / "events.jsonl", tmp_path / "out.txt"
    writer = log.open("ab", buffering=0)
    writer.write(line("before"))
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmproxy", "events", "tail", "--file", str(log), "--follow"],
            cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE,
        )  # fmt: skip
    try:
        wait_for_lines(out, 1)
        os.replace(log, tmp_path / "events.jsonl-20261206")  # logrotate: rename, then `create`
        log.touch()
        wait_until_open(proc.pid, log)  # the reader has moved to the new, empty file
        writer.write(line("late"))  # the dispatcher has not had its SIGHUP yet
        writer.close()
        with log.open("ab") as f:  # SIGHUP: it reopens the path
            f.write(line("after"))
        lines = wait_for_lines(out, 3)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert sorted(row.rsplit("req=", 1)[1] for row in lines) == ["after", "before", "late"]


def test_a_log_it_cannot_read_is_one_line_naming_it_and_exit_1(tmp_path: Path) -> None:
    if WITHOUT_OVERRIDE and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: every file is readable")
    log = tmp_path / "events.jsonl"
    log.write_bytes(line("secret"))
    if os.geteuid() == 0:
        os.chown(log, 65534, 65534)  # another user's 0600 file, like the dispatcher's for an operator
    log.chmod(0o600 if os.geteuid() == 0 else 0o000)
    for follow in ((), ("--follow",)):
        denied = tail("--file", str(log), *follow, unprivileged=True)
        assert (denied.returncode, denied.stdout) == (1, b""), denied.stderr
        assert denied.stderr.decode() == f"llm-proxy: cannot read the event log {log}: Permission denied\n"
    directory = tail("--file", str(tmp_path), "--follow")
    assert directory.returncode == 1
    assert directory.stderr.decode() == f"llm-proxy: cannot read the event log {tmp_path}: Is a directory\n"


def test_help_says_refusals_are_not_events_and_its_example_is_a_status_events_carry() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "llmproxy", "events", "tail", "--help"],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    ).stdout.decode()
    text = " ".join(shown.split())
    assert "--status 429" not in text  # events carry the upstream's statuses, not the proxy's refusals
    assert "not events" in text and "access log" in text
    assert "--status 5xx" in text or "--status 500" in text


def test_follow_starts_over_after_copytruncate(tmp_path: Path) -> None:
    log, out = tmp_path / "events.jsonl", tmp_path / "out.txt"
    log.write_bytes(line("before-1") + line("before-2"))
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmproxy", "events", "tail", "--file", str(log), "--follow", "-n", "1"],
            cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE,
        )  # fmt: skip
    try:
        wait_for_lines(out, 1)
        shutil.copyfile(log, tmp_path / "events.jsonl-20261206")  # logrotate copytruncate
        with log.open("r+b") as f:
            f.truncate(0)
        with log.open("ab") as f:
            f.write(line("after"))
        lines = wait_for_lines(out, 2)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert [row.rsplit("req=", 1)[1] for row in lines] == ["before-2", "after"]
