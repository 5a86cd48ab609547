"""Redis Streams under faults, with the installed server and its worker processes: nothing is lost."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.e2e.conftest import free_port, poll
from tests.fakes.upstream import FakeUpstream

UPSTREAM_KEY = "sk-upstream-project-key-0123456789abcdef"
CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


def worker_pids(server_pid: int) -> list[int]:
    """The server's dispatcher worker processes (multiprocessing spawn children)."""
    pids = []
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if cmdline.startswith(b"llm-proxy: dispatcher"):
                pids.append(int(child))
    return pids


async def _token(server) -> str:
    project = await server.manage("project", "create", "--name", "faults", "--api-key", UPSTREAM_KEY)
    return (await server.manage("token", "generate", "--project-id", project["id"]))["token"]


async def _send(server, token: str, n: int, concurrency: int = 16) -> Counter[int]:
    statuses: Counter[int] = Counter()
    queue = iter(range(n))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def client_loop(session: aiohttp.ClientSession) -> None:
        for _ in queue:
            async with session.post(f"{server.url}/v1/chat/completions", data=CHAT, headers=headers) as r:
                await r.read()
                statuses[r.status] += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client_loop(session) for _ in range(concurrency)))
    return statuses


@pytest.fixture
async def stream_key():
    key = f"test-e2e-{uuid.uuid4().hex}"
    yield key
    r = aioredis.Redis(host="127.0.0.1", port=6379)
    await r.delete(key, f"{key}:dead", f"{key}:dispatcher-stats", f"{key}:dispatcher-totals")
    await r.aclose()


def streams_env(upstream: FakeUpstream, stream_key: str, **overrides: str) -> dict[str, str]:
    """A server on Redis Streams with `file` workers, reading in short blocks; ``overrides`` win."""
    return {
        "UPSTREAM_BASE_URL": upstream.url,
        "LLM_PROXY_EVENT_BUS": "redis-streams",
        "REDIS_ADDR": "127.0.0.1:6379",
        "REDIS_STREAM_KEY": stream_key,
        "REDIS_STREAM_BLOCK_TIME": "200ms",
        "DISPATCHER_SERVICES": "file",
        **overrides,
    }


async def test_kill_9_of_a_worker_mid_flow_loses_no_event_and_duplicates_none(make_server, stream_key):
    async with FakeUpstream() as upstream:
        server = await make_server(
            **streams_env(
                upstream,
                stream_key,
                REDIS_STREAM_CLAIM_TIME="1s",
                DISPATCHER_WORKERS="2",
                DISPATCHER_BATCH_SIZE="20",
            )
        )
        assert await poll(lambda: len(worker_pids(server.process.pid)) == 2)
        token = await _token(server)

        flow = asyncio.ensure_future(_send(server, token, 240, concurrency=8))
        assert await poll(lambda: len(server.events()) >= 40, timeout=30)
        victim = worker_pids(server.process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        pending = await _pending_of(stream_key, f"{socket.gethostname()}-{victim}")
        assert await flow == Counter({200: 240})
        print(f"killed worker {victim} holding {pending} unacked entries")

        # the supervisor restarts the killed worker; its unacked entries are claimed after 1s
        assert await poll(
            lambda: (
                len(worker_pids(server.process.pid)) == 2 and victim not in worker_pids(server.process.pid)
            )
        )
        assert await poll(lambda: len(server.events()) >= 240, timeout=30), server.log()
        assert await server.stop() == 0

    ids = [e["id"] for e in server.events()]
    assert len(ids) == 240 and len(set(ids)) == 240
    assert len({e["request_id"] for e in server.events()}) == 240


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server to run a private Redis")
async def test_a_redis_restart_under_load_keeps_proxying_and_delivers_what_came_after(
    make_server, stream_key, tmp_path
):
    port = free_port()
    redis_cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(tmp_path)]  # fmt: skip
    redis_proc = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
    try:
        r = aioredis.Redis(host="127.0.0.1", port=port)
        assert await _wait_ping(r)
        async with FakeUpstream() as upstream:
            server = await make_server(
                **streams_env(
                    upstream,
                    stream_key,
                    REDIS_ADDR=f"127.0.0.1:{port}",
                    REDIS_STREAM_CLAIM_TIME="1s",
                    DISPATCHER_WORKERS="1",
                )
            )
            token = await _token(server)
            before = await _send(server, token, 50)
            assert await poll(lambda: len(server.events()) == 50), server.log()

            redis_proc.kill()
            redis_proc.wait()
            during = await _send(server, token, 50)  # Redis is gone: the proxy answers anyway

            redis_proc = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
            assert await _wait_ping(r)
            after = await _send(server, token, 50)
            assert before + during + after == Counter({200: 150})

            # what was spilled during the outage and everything after it reaches the log
            assert await poll(lambda: len(server.events()) == 150, timeout=40), server.log()
            assert await server.stop() == 0
        await r.aclose()
    finally:
        redis_proc.kill()
        redis_proc.wait()
    assert len({e["id"] for e in server.events()}) == 150


async def _wait_ping(r: aioredis.Redis, timeout: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            if await r.ping():
                return True
        except Exception:
            await asyncio.sleep(0.1)
    return False


async def _pending_of(stream_key: str, consumer: str) -> int:
    r = aioredis.Redis(host="127.0.0.1", port=6379)
    try:
        for c in await r.xinfo_consumers(stream_key, "llm-proxy-dispatchers-file"):
            if c["name"].decode() == consumer:
                return int(c["pending"])
        return 0
    finally:
        await r.aclose()


async def test_a_standalone_detached_dispatcher_delivers_what_the_server_publishes(
    make_server, stream_key, tmp_path
):
    events_file = tmp_path / "standalone.jsonl"
    pid_file = tmp_path / "dispatcher.pid"
    async with FakeUpstream() as upstream:
        server = await make_server(
            UPSTREAM_BASE_URL=upstream.url,
            LLM_PROXY_EVENT_BUS="redis-streams",
            REDIS_ADDR="127.0.0.1:6379",
            REDIS_STREAM_KEY=stream_key,
            FILE_EVENT_LOG="",  # the server runs no dispatcher itself
        )
        env = {**server.env, "REDIS_STREAM_BLOCK_TIME": "200ms"}
        dispatcher = ["--service", "file", "--endpoint", str(events_file)]
        started = await _run(env, "dispatcher", *dispatcher, "--detach", "--pid-file", str(pid_file))
        assert started.returncode == 0, started.stderr
        try:
            assert (await _run(env, "status", "--pid-file", str(pid_file))).returncode == 0
            token = await _token(server)
            assert await _send(server, token, 30) == Counter({200: 30})
            lines = lambda: events_file.read_text().splitlines() if events_file.exists() else []  # noqa: E731
            assert await poll(lambda: len(lines()) == 30)
        finally:
            stopped = await _run(env, "stop", "--pid-file", str(pid_file))
        assert stopped.returncode == 0, stopped.stderr
        assert (await _run(env, "status", "--pid-file", str(pid_file))).returncode == 3
        assert await server.stop() == 0


async def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    from tests.e2e.conftest import LLM_PROXY

    proc = await asyncio.create_subprocess_exec(
        LLM_PROXY, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return subprocess.CompletedProcess(args, proc.returncode or 0, out.decode(), err.decode())


async def test_events_published_before_the_workers_have_started_are_still_delivered(make_server, stream_key):
    async with FakeUpstream() as upstream:
        setup = await make_server(UPSTREAM_BASE_URL=upstream.url)  # same database: the token outlives it
        token = await _token(setup)
        assert await setup.stop() == 0
        server = await make_server(**streams_env(upstream, stream_key))
        # sent the moment the server answers, while its worker process is still starting
        assert await _send(server, token, 20) == Counter({200: 20})
        assert await poll(lambda: len(server.events()) == 20, timeout=30), server.log()
        assert await server.stop() == 0


async def test_sighup_reopens_the_workers_event_log_and_never_kills_a_starting_worker(
    make_server, stream_key
):
    """logrotate moves the file away and sends SIGHUP: later events go to a new file at the path.

    The first SIGHUPs arrive while the workers are still starting (importing): they must survive.
    """
    async with FakeUpstream() as upstream:
        server = await make_server(**streams_env(upstream, stream_key, DISPATCHER_WORKERS="2"))
        first_workers: list[int] = []
        for _ in range(40):  # SIGHUP every 50 ms from the moment the workers exist until they are up
            if len(first_workers) < 2:  # the first two workers, however far apart they were spawned
                first_workers = worker_pids(server.process.pid)
            server.process.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.05)
        assert len(first_workers) == 2
        token = await _token(server)
        assert await _send(server, token, 10) == Counter({200: 10})
        assert await poll(lambda: len(server.events()) == 10, timeout=30), server.log()

        rotated = server.events_file.with_name("events.jsonl.1")
        server.events_file.rename(rotated)
        server.process.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)  # the workers reopen before their next write
        assert await _send(server, token, 15) == Counter({200: 15})
        assert await poll(lambda: server.events_file.exists() and len(server.events()) == 15, timeout=30)
        assert sorted(worker_pids(server.process.pid)) == sorted(first_workers), "a worker died"
        assert "exited with" not in server.log()
        assert await server.stop() == 0

    assert len(rotated.read_text().splitlines()) == 10


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its new parent to reap it has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _started_by(pid: int) -> list[int]:
    """Every process ``pid`` started that still runs: its workers and multiprocessing's resource tracker."""
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


async def _group_state(stream_key: str, until: Callable[[int, list[str]], bool]) -> tuple[int, list[str]]:
    """(entries pending in the `file` group, names of its consumers), polled until ``until`` holds (or 20 s)."""
    r = aioredis.Redis(host="127.0.0.1", port=6379)
    deadline = time.monotonic() + 20
    try:
        while True:
            pending = await r.xpending(stream_key, "llm-proxy-dispatchers-file")
            consumers = await r.xinfo_consumers(stream_key, "llm-proxy-dispatchers-file")
            state = int(pending["pending"]), sorted(c["name"].decode() for c in consumers)
            if until(*state) or time.monotonic() > deadline:
                return state
            await asyncio.sleep(0.02)
    finally:
        await r.aclose()


async def test_a_kill_9_of_the_server_ends_its_workers_within_a_second_and_a_restart_runs_one_set(
    make_server, stream_key
):
    """Workers watch their server: when it is gone they finish the batch in hand and exit, so a restart
    with the same settings runs DISPATCHER_WORKERS consumers per service, not twice as many, and every
    answered request's event is written exactly once."""
    env_overrides = {
        "DISPATCHER_WORKERS": "2",
        "REDIS_STREAM_CLAIM_TIME": "1s",
        # a batch goes out full or 30 s after its first event: at the kill every event is in a worker's hands
        "DISPATCHER_BATCH_SIZE": "1000",
        "DISPATCHER_FLUSH_INTERVAL": "30s",
    }
    async with FakeUpstream() as upstream:
        server = await make_server(**streams_env(upstream, stream_key, **env_overrides))
        assert await poll(lambda: len(worker_pids(server.process.pid)) == 2)
        token = await _token(server)
        assert await _send(server, token, 40) == Counter({200: 40})
        held, _ = await _group_state(stream_key, until=lambda pending, _: pending == 40)
        assert held == 40, f"the workers hold {held} of 40 events"
        assert server.events() == []

        started = _started_by(server.process.pid)
        assert len(started) >= 2
        server.process.kill()
        killed_at = time.monotonic()
        while any(_alive(pid) for pid in started) and time.monotonic() - killed_at < 3.0:
            await asyncio.sleep(0.01)
        took = time.monotonic() - killed_at
        left = [pid for pid in started if _alive(pid)]
        print(f"the server's {len(started)} processes {started} were gone {took:.3f}s after its kill -9")
        assert not left, f"still running {took:.1f}s after the server's kill -9: {left}"
        await server.process.wait()

        restarted = await make_server(**streams_env(upstream, stream_key, **env_overrides))
        assert await poll(lambda: len(worker_pids(restarted.process.pid)) == 2)
        host = socket.gethostname()
        workers = sorted(f"{host}-{pid}" for pid in worker_pids(restarted.process.pid))
        _, consumers = await _group_state(stream_key, until=lambda _, consumers: consumers == workers)
        assert consumers == workers, f"consumers {consumers}, expected only the new workers {workers}"

        assert await _send(restarted, token, 20) == Counter({200: 20})
        held, _ = await _group_state(stream_key, until=lambda pending, _: pending >= 20)
        assert held >= 20, f"the workers hold {held} of 20 events"  # so the SIGTERM below finds them in hand
        assert await restarted.stop() == 0  # a SIGTERM sends the batch in hand

    ids = [e["id"] for e in restarted.events()]
    assert len(ids) == 60 and len(set(ids)) == 60, f"{len(ids)} lines, {len(set(ids))} distinct events"
