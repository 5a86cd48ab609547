"""Fixtures for running the installed `llm-proxy` as a subprocess against loopback peers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

LLM_PROXY = str(Path(sys.executable).parent / "llm-proxy")
MANAGEMENT_TOKEN = "e2e-management-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One `llm-proxy server` subprocess with its own data directory and port.

    Its stdout and stderr go to files, never to pipes: nothing reads a pipe while a test runs, and the
    default ACCESS_LOG (``-``) writes a line per request to stderr; a full pipe (~190 KiB with asyncio's
    buffer, ~800 requests) would block the server's writes, and on Python 3.11 ``Process.wait()`` also
    waits for the pipes' end. ``stderr`` (a file descriptor) replaces the file where a test wants a pipe.
    """

    def __init__(self, tmp_path: Path, env: dict[str, str], stderr: int | None = None) -> None:
        self.dir = tmp_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.events_file = tmp_path / "events.jsonl"
        self.audit_file = tmp_path / "audit.log"
        self.log_file = tmp_path / "server.log"
        self.stdout_file = tmp_path / f"stdout-{self.port}.txt"  # per port: a test's servers may share a dir
        self.stderr_file = tmp_path / f"stderr-{self.port}.txt"
        self._stderr = stderr
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "MANAGEMENT_TOKEN": MANAGEMENT_TOKEN,
            "DATABASE_URL": f"sqlite:///{tmp_path}/llm-proxy.db",
            "LISTEN_ADDR": f"127.0.0.1:{self.port}",
            "AUDIT_LOG_FILE": str(self.audit_file),
            "FILE_EVENT_LOG": str(self.events_file),
            "LOG_FILE": str(self.log_file),
            **env,
        }
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.stdout_file.open("ab") as stdout, self.stderr_file.open("ab") as stderr:
            self.process = await asyncio.create_subprocess_exec(
                LLM_PROXY, "server", env=self.env, stdout=stdout,
                stderr=stderr if self._stderr is None else self._stderr,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    raise AssertionError(f"server exited {self.process.returncode}: {self.stderr()}")
                try:
                    async with session.get(f"{self.url}/health") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("server did not answer /health within 30s:\n" + self.log())

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def stderr(self) -> str:
        """What the server wrote to stderr so far (the access log's lines with the default ACCESS_LOG)."""
        return self.stderr_file.read_text(errors="replace") if self.stderr_file.exists() else ""

    async def stop(self, timeout: float = 40) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await asyncio.wait_for(self.process.wait(), 10)
            raise AssertionError("server did not stop on SIGTERM:\n" + self.log()) from None

    async def kill_if_running(self) -> None:
        """A test's last resort (its ``finally``): a server still running is killed and reaped."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await asyncio.wait_for(self.process.wait(), 10)

    async def manage(self, *args: str) -> Any:
        """Run `llm-proxy manage ... --json` and return the decoded output."""
        proc = await asyncio.create_subprocess_exec(
            LLM_PROXY, "manage", "--manage-api-base-url", self.url, "--json", *args,
            env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        return json.loads(out)

    def events(self) -> list[dict[str, Any]]:
        if not self.events_file.exists():
            return []
        return [json.loads(line) for line in self.events_file.read_text().splitlines() if line]


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[Any]:
    servers: list[ServerProcess] = []

    async def make(**env: str) -> ServerProcess:
        server = ServerProcess(tmp_path, env)
        servers.append(server)
        await server.start()
        return server

    yield make
    for server in servers:
        if server.process is not None and server.process.returncode is None:
            server.process.send_signal(signal.SIGKILL)
        # Workers outliving a killed server would hold a pipe given as its stderr, and on Python 3.11
        # Process.wait() waits for an asyncio pipe too; they are orphans besides: kill them before waiting.
        for pid in _children_left(server):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if server.process is not None:
            await asyncio.wait_for(server.process.wait(), 30)


def _children_left(server: ServerProcess) -> list[int]:
    """Worker processes still alive after their server was killed (found by their environment's port)."""
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if f"LISTEN_ADDR=127.0.0.1:{server.port}".encode() in environ:
            left.append(int(proc.name))
    return left


async def poll(condition: Any, timeout: float = 20.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(interval)
    return bool(condition())
