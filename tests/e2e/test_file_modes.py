"""Secrets on disk: the quick start's files are private (the event log readable by a group), whatever
the umask, and an existing file readable by others is named in one warning at start."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import aiohttp

from tests.e2e.conftest import LLM_PROXY, MANAGEMENT_TOKEN, free_port, poll
from tests.fakes.upstream import FakeUpstream

UPSTREAM_KEY = "sk-upstream-file-modes-key-0123456789"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def quick_start_env(upstream_url: str) -> dict[str, str]:
    """The README quick start: default DATABASE_URL and AUDIT_LOG_FILE (./data/…), an event log there too."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "MANAGEMENT_TOKEN": MANAGEMENT_TOKEN,
        "LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        "UPSTREAM_BASE_URL": upstream_url,
        "FILE_EVENT_LOG": "./data/events.jsonl",
    }


async def use_the_proxy(url: str) -> None:
    """One project, one token, one proxied request: the audit log and the event log get written."""
    auth = {"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}
    async with aiohttp.ClientSession(base_url=url) as client:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with client.get("/health") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /health"
            await asyncio.sleep(0.1)
        name = f"p{time.monotonic_ns()}"
        async with client.post(
            "/manage/projects", json={"name": name, "api_key": UPSTREAM_KEY}, headers=auth
        ) as r:
            project = await r.json()
        async with client.post("/manage/tokens", json={"project_id": project["id"]}, headers=auth) as r:
            token = (await r.json())["token"]
        async with client.post(
            "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {token}"}
        ) as r:
            assert r.status == 200


def modes(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    return {name: mode(folder / name) for name in names}


async def test_the_quick_start_leaves_no_file_readable_by_other_users(tmp_path: Path) -> None:
    files = ("llm-proxy.db", "llm-proxy.db-wal", "llm-proxy.db-shm", "audit.log", "events.jsonl")
    data, run = tmp_path / "data", tmp_path / "run"
    run.mkdir()
    async with FakeUpstream() as upstream:
        env = quick_start_env(upstream.url)
        # a umask that lets the group write and everyone read: the modes must not depend on it
        server = await asyncio.create_subprocess_exec(
            LLM_PROXY, "server", cwd=tmp_path, env=env, preexec_fn=lambda: os.umask(0o002),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await use_the_proxy(f"http://{env['LISTEN_ADDR']}")
            assert await poll(lambda: all((data / name).exists() for name in files)), os.listdir(data)
            seen = {"data": mode(data), **modes(data, files)}  # WAL and SHM go away at a clean stop
        finally:
            server.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(server.communicate(), 40)
        assert server.returncode == 0, err.decode()
        assert seen == {
            "data": "0o700",
            "llm-proxy.db": "0o600",
            "llm-proxy.db-wal": "0o600",
            "llm-proxy.db-shm": "0o600",
            "audit.log": "0o600",
            "events.jsonl": "0o640",  # the llm-proxy group reads it (docs/deploy-ec2.md §7)
        }
        assert b"readable by" not in err  # every file was created private: nothing to warn about

        # left readable by an operator's chmod, or by an older version: one warning line each, at start
        os.chmod(data / "llm-proxy.db", 0o644)
        os.chmod(data / "audit.log", 0o640)
        os.chmod(data / "events.jsonl", 0o644)
        detach = [
            LLM_PROXY,
            "server",
            "--detach",
            "--pid-file",
            "run/llm-proxy.pid",
            "--log-file",
            "run/server.log",
        ]
        started = subprocess.run(detach, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert started.returncode == 0, started.stderr
        try:
            assert mode(run / "llm-proxy.pid") == "0o600"
            await use_the_proxy(f"http://{env['LISTEN_ADDR']}")  # the file dispatcher opens the event log
            log = run / "server.log"
            assert await poll(lambda: "events.jsonl" in log.read_text()), log.read_text()
        finally:
            stopped = subprocess.run(
                [LLM_PROXY, "stop", "--pid-file", "run/llm-proxy.pid"], cwd=tmp_path, env=env,
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        assert stopped.returncode == 0, stopped.stderr
    warnings = [line for line in log.read_text().splitlines() if "readable by" in line]
    assert len(warnings) == 3, warnings
    for name, who in (
        ("llm-proxy.db", "its group and others"),
        ("audit.log", "its group"),
        ("events.jsonl", "others"),
    ):
        [warning] = [w for w in warnings if f"data/{name} " in w]
        assert f"is readable by {who}" in warning
    assert modes(data, ("llm-proxy.db", "audit.log", "events.jsonl")) == {
        "llm-proxy.db": "0o644",  # warned about, never changed behind the operator's back
        "audit.log": "0o640",
        "events.jsonl": "0o644",
    }
