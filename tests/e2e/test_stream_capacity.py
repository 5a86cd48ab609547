"""What lets one `llm-proxy server` hold thousands of open streams: its open-files soft limit raised to the
hard limit (every open stream holds two fds, client and upstream, and the soft 1024 a shell or container
often starts with would hold ~480), and a listen queue deep enough for a burst of connections."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.conftest import LLM_PROXY, MANAGEMENT_TOKEN, free_port


def _limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


@contextmanager
def running_server(
    tmp_path: Path, soft_nofile: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`llm-proxy server` on a free loopback port, started with ``soft_nofile`` as its soft fd limit."""
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "MANAGEMENT_TOKEN": MANAGEMENT_TOKEN, "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite",
           "LISTEN_ADDR": f"127.0.0.1:{port}", "AUDIT_LOG_FILE": str(tmp_path / "audit.log"),
           "LOG_FILE": str(tmp_path / "server.log")}  # fmt: skip
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    lower = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft_nofile, hard))) if soft_nofile else None
    server = subprocess.Popen([LLM_PROXY, "server"], env=env, preexec_fn=lower)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "server did not come up"
                time.sleep(0.1)
        yield server, port
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def test_the_server_raises_its_soft_open_files_limit_to_the_hard_limit_and_says_what_it_allows(
    tmp_path: Path,
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    assert low < hard, "the hard limit must be above 256 for this test to mean anything"
    with running_server(tmp_path, soft_nofile=low) as (server, _):
        assert _limits(server.pid) == (hard, hard)
    log = (tmp_path / "server.log").read_text()
    assert f"open files limit {hard}" in log and f"{(hard - 64) // 2} open streams" in log


def test_the_listen_queue_holds_a_burst_of_1024_connections(tmp_path: Path) -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    if somaxconn < 1024:
        pytest.skip(f"net.core.somaxconn is {somaxconn}: the kernel caps every listen queue there")
    with running_server(tmp_path) as (_, port):
        listed = subprocess.run(
            ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.split()
    assert listed[0] == "LISTEN" and int(listed[2]) == 1024  # Send-Q of a listener: its backlog
