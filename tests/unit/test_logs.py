"""LOG_FORMAT, LOG_LEVEL, LOG_FILE: JSON or text lines, secrets redacted, reopened after rotation."""

from __future__ import annotations

import json
import logging
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
    assert "before" in (tmp_path / "server.log.1").read_text()
    assert "after" in log_file.read_text() and "before" not in log_file.read_text()
