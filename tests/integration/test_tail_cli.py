"""The real `llm-proxy events tail --follow` process: follows appends and rotation, exits 0 on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    assert b"skipping malformed line 3" in err
