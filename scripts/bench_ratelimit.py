#!/usr/bin/env python3
"""Cost of the shared rate limit per request, and how fast a revocation reaches another instance.

Runs the real ``Authority`` on a temporary SQLite store against a private ``redis-server`` (started here
on a free loopback port, so its command counts are ours alone):

- token checks on a cached token, unlimited / limited per instance / limited in Redis, one at a time
  and 32 at once: wall and CPU µs per check, and Redis commands sent per check (INFO commandstats);
- revocation: two Authorities (two instances) with their invalidation listeners; the time from
  ``invalidate_token`` on the first to the second refusing the token, p50/p99 over ``--revocations``.

    .venv/bin/python scripts/bench_ratelimit.py [--checks 20000] [--revocations 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from redis.asyncio import Redis

from llmproxy.auth.authority import Authority
from llmproxy.auth.invalidation import Invalidations
from llmproxy.auth.shared_ratelimit import SharedRateLimiter
from llmproxy.auth.tokens import generate_token, hash_token, token_hint
from llmproxy.config import AuthSettings, RedisSettings
from llmproxy.errors import ProxyError
from llmproxy.loop import run_loop
from llmproxy.store.base import Project, Token
from llmproxy.store.sqlite import SqliteStore

# Commands the Lua script runs inside Redis: counted by INFO, but no round trip of their own.
SCRIPT_COMMANDS = {"time", "zremrangebyscore", "zcard", "zadd", "pexpire", "zrange"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*args, "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise SystemExit("redis-server did not start")


async def add_token(store: SqliteStore, project: Project, limit: int | None) -> str:
    raw = generate_token()
    token = Token(
        id=str(uuid.uuid4()),
        project_id=project.id,
        token_hash=hash_token(raw),
        token_hint=token_hint(raw),
        created_at=datetime.now(UTC),
        rate_limit_per_minute=limit,
    )
    await store.create_token(token)
    return raw


async def sent_commands(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    ours = {"info", "config|resetstat", *SCRIPT_COMMANDS}
    return sum(v["calls"] for k, v in stats.items() if k.removeprefix("cmdstat_") not in ours)


async def time_checks(authority: Authority, raw: str, n: int, concurrency: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per check over ``n`` checks, ``concurrency`` at a time."""

    async def worker(count: int) -> None:
        for _ in range(count):
            await authority.check(raw)

    await worker(200)  # warm: cached entry, pooled connections, loaded script
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    n = n // concurrency * concurrency
    return (time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6


async def checks(store: SqliteStore, project: Project, redis_settings: RedisSettings, n: int) -> None:
    redis = Redis(host="127.0.0.1", port=int(redis_settings.addr.rpartition(":")[2]))
    settings = AuthSettings()
    shared = SharedRateLimiter(redis_settings, prefix=f"bench:{uuid.uuid4().hex}:")
    cases = [
        ("unlimited token", Authority(store, settings), None),
        ("limited, per instance (local)", Authority(store, settings), 10**9),
        ("limited, shared in Redis", Authority(store, settings, shared_limiter=shared), 10**9),
    ]
    print(f"token check on a cached token, {n} checks per row (this process only; Redis runs apart)")
    print(f"{'':32} {'c':>3} {'wall µs':>8} {'CPU µs':>7} {'Redis cmds/check':>17}")
    for name, authority, limit in cases:
        raw = await add_token(store, project, limit)
        for concurrency in (1, 32):
            await redis.config_resetstat()
            before = await sent_commands(redis)
            wall, cpu = await time_checks(authority, raw, n, concurrency)
            per_check = (await sent_commands(redis) - before) / (n // concurrency * concurrency + 200)
            print(f"{name:32} {concurrency:>3} {wall:>8.1f} {cpu:>7.1f} {per_check:>17.3f}")
    await shared.aclose()
    await redis.aclose()


async def revocations(store: SqliteStore, project: Project, redis_settings: RedisSettings, n: int) -> None:
    prefix = f"bench:{uuid.uuid4().hex}:"
    first_inv, second_inv = (Invalidations(redis_settings, prefix=prefix) for _ in range(2))
    first = Authority(store, AuthSettings(), invalidations=first_inv)
    second = Authority(store, AuthSettings(), invalidations=second_inv)
    listener = asyncio.get_running_loop().create_task(second_inv.listen(second))
    while not second_inv.listening:
        await asyncio.sleep(0.01)
    latencies = []
    for _ in range(n):
        raw = await add_token(store, project, None)
        await second.check(raw)  # cached on the second instance
        token_id = (await store.get_token_by_hash(hash_token(raw))).id  # type: ignore[union-attr]
        await store.update_token(token_id, {"is_active": False, "deactivated_at": datetime.now(UTC)})
        start = time.perf_counter()
        first.invalidate_token(token_id)
        while True:
            try:
                await second.check(raw)
            except ProxyError:
                break
            await asyncio.sleep(0)
        latencies.append((time.perf_counter() - start) * 1000)
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    await first_inv.aclose()
    await second_inv.aclose()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"\nrevocation through one instance → refused by the other: {n} revocations, "
          f"p50 {statistics.median(latencies):.2f} ms, p99 {p99:.2f} ms, max {latencies[-1]:.2f} ms "
          "(includes the second's store read)")  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="llmproxy-bench-ratelimit-"))
    process, port = start_redis(workdir)
    store = SqliteStore(str(workdir / "bench.db"), None)
    try:
        await store.open()
        now = datetime.now(UTC)
        project = await store.create_project(
            Project(id=str(uuid.uuid4()), name="bench", api_key="sk-bench", created_at=now, updated_at=now)
        )
        redis_settings = RedisSettings(addr=f"127.0.0.1:{port}")
        await checks(store, project, redis_settings, args.checks)
        await revocations(store, project, redis_settings, args.revocations)
    finally:
        await store.close()
        process.kill()
        process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checks", type=int, default=20000, help="token checks per row (default 20000)")
    ap.add_argument("--revocations", type=int, default=200, help="revocations timed (default 200)")
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}", file=sys.stderr)
    run_loop(main(ap.parse_args()))
