"""`llm-proxy server` raises its open-files soft limit to the hard limit: every open stream holds two fds
(client and upstream), and the soft 1024 a shell or container often starts with would hold ~500."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.e2e.conftest import LLM_PROXY, MANAGEMENT_TOKEN, free_port


def _limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


def test_the_server_raises_its_soft_open_files_limit_to_the_hard_limit_and_says_what_it_allows(
    tmp_path: Path,
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    assert low < hard, "the hard limit must be above 256 for this test to mean anything"
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "MANAGEMENT_TOKEN": MANAGEMENT_TOKEN, "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite",
           "LISTEN_ADDR": f"127.0.0.1:{port}", "AUDIT_LOG_FILE": str(tmp_path / "audit.log"),
           "LOG_FILE": str(tmp_path / "server.log")}  # fmt: skip
    server = subprocess.Popen(
        [LLM_PROXY, "server"],
        env=env,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard)),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "server did not come up"
                time.sleep(0.1)
        assert _limits(server.pid) == (hard, hard)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    log = (tmp_path / "server.log").read_text()
    assert f"open files limit {hard}" in log and f"{(hard - 64) // 2} open streams" in log
