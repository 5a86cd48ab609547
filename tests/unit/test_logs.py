"""LOG_FORMAT, LOG_LEVEL, LOG_FILE: JSON or text lines, secrets redacted, reopened after rotation."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmproxy import logs

KEY = "sk-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_lines_at_the_chosen_level_with_secrets_redacted(tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    logs.configure("warning", "json", str(log_file))
    log = logging.getLogger("llmproxy.test")
    log.info("not at this level")
    log.warning("upstream refused %s", KEY)
    assert logs.flush()  # lines are written by the log's own thread
    [line] = log_file.read_text().splitlines()
    doc = json.loads(line)
    assert (doc["level"], doc["logger"], doc["msg"]) == (
        "warning",
        "llmproxy.test",
        "upstream refused sk-AbCd…",
    )
    assert KEY not in line


def test_a_rotated_log_file_is_recreated_on_reopen(tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    logs.configure("info", "text", str(log_file))
    logging.getLogger("llmproxy.test").info("before")
    log_file.rename(tmp_path / "server.log.1")
    logs.reopen_files()
    logging.getLogger("llmproxy.test").info("after")
    assert logs.flush()
    assert "before" in (tmp_path / "server.log.1").read_text()
    assert "after" in log_file.read_text() and "before" not in log_file.read_text()


def test_the_caller_never_waits_for_a_stuck_stderr_and_dropped_lines_are_counted(tmp_path: Path) -> None:
    """stderr a one-page pipe nobody reads: 11,000 warnings are logged at once (the queue holds 10,000,
    the rest dropped); once the pipe is read again, every queued line arrives and one line counts the
    dropped ones."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    saved = os.dup(2)
    os.dup2(write_end, 2)
    try:
        logs.configure("info", "text", "")
    finally:
        os.dup2(saved, 2)  # the writer has its own duplicate of the pipe
        os.close(saved)
        os.close(write_end)
    log = logging.getLogger("llmproxy.test")
    started = time.monotonic()
    for i in range(logs.QUEUE_MAX + 1_000):
        log.warning("line %d", i)
    assert time.monotonic() - started < 5  # (blocking on the pipe would never end)
    chunks: list[bytes] = []

    def drain() -> None:  # until the writer closes its end of the pipe
        while data := os.read(read_end, 1 << 16):
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    assert logs.flush(30)  # everything queued is written once the pipe is read again
    logs.close()
    reader.join(10)
    os.close(read_end)
    received = b"".join(chunks)
    text = received.decode()
    written = [int(m) for m in re.findall(r"line (\d+)\n", text)]
    [dropped] = [int(m) for m in re.findall(r"(\d+) log lines dropped", text)]
    assert written == sorted(written) and written[0] == 0  # in order, from the first
    assert dropped > 0 and len(written) + dropped == logs.QUEUE_MAX + 1_000
