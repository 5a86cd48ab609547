"""`ps` names every llm-proxy process: the server and each dispatcher worker (read from /proc/<pid>/cmdline)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import LLM_PROXY, poll
from tests.e2e.test_event_pipeline import streams_env
from tests.fakes.upstream import FakeUpstream


def title(pid: int) -> str:
    """What ps shows: the command line, its NUL separators as spaces."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def child_titles(pid: int) -> list[str]:
    """The titles of ``pid``'s children but multiprocessing's resource tracker (not ours to name)."""
    titles = (title(child) for child in children(pid))
    return sorted(t for t in titles if "multiprocessing.resource_tracker" not in t)


@pytest.fixture
def stream_key(tmp_path: Path) -> str:
    return f"test-titles-{os.getpid()}-{tmp_path.name}"


async def test_the_server_and_its_workers_are_named_in_ps(make_server, stream_key):
    async with FakeUpstream() as upstream:
        server = await make_server(**streams_env(upstream, stream_key, DISPATCHER_WORKERS="2"))
        pid = server.process.pid
        expected = ["llm-proxy: dispatcher file #1", "llm-proxy: dispatcher file #2"]
        assert await poll(lambda: child_titles(pid) == expected), child_titles(pid)
        assert title(pid) == "llm-proxy: server"
        assert await server.stop() == 0


async def test_a_standalone_dispatchers_workers_are_named_in_ps(tmp_path, stream_key):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LLM_PROXY_EVENT_BUS": "redis-streams",
        "REDIS_ADDR": "127.0.0.1:6379",
        "REDIS_STREAM_KEY": stream_key,
        "FILE_EVENT_LOG": str(tmp_path / "events.jsonl"),
        "LOG_FILE": str(tmp_path / "dispatcher.log"),
    }
    process = await asyncio.create_subprocess_exec(LLM_PROXY, "dispatcher", "--workers", "2", env=env)
    try:
        expected = ["llm-proxy: dispatcher file #1", "llm-proxy: dispatcher file #2"]
        assert await poll(lambda: child_titles(process.pid) == expected), child_titles(process.pid)
        assert title(process.pid) == "llm-proxy: dispatcher file"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            for child in children(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            process.kill()
            await process.wait()
