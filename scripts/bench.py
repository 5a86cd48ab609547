#!/usr/bin/env python3
"""Throughput, latency and CPU per request of the proxy hot path; never part of the test suite.

Starts, as separate processes: a fast fake upstream (raw uvloop protocol answering a fixed chat
completion) and the real `llm-proxy server` (temporary SQLite store, a project and a token created
through the management API). Then drives the same non-streamed chat completion at c=1 and c=32,
directly against the upstream and through the proxy, with `wrk` (or an aiohttp client if wrk is
missing), and prints req/s, p50/p99 and the proxy process's CPU µs per request (/proc utime+stime).

    .venv/bin/python scripts/bench.py [--duration 10] [--connections 1,32] [--events]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATH = "/v1/chat/completions"
REQUEST_BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello in one word."}],
        "max_tokens": 5,
    }
).encode()
UPSTREAM_BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 13, "completion_tokens": 2, "total_tokens": 15},
    }
).encode()
UPSTREAM_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: req_bench\r\n"
    b"openai-processing-ms: 1\r\nContent-Length: "
    + str(len(UPSTREAM_BODY)).encode()
    + b"\r\n\r\n"
    + UPSTREAM_BODY
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the fake upstream (runs in its own process: `bench.py --serve-upstream PORT`) ----------------


class _UpstreamProtocol(asyncio.Protocol):
    """Minimal HTTP/1.1 keep-alive server: reads a request (Content-Length bodies), answers at once."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.need: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end]).lower()
                del self.buf[: end + 4]
                m = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
                self.need = int(m.group(1)) if m else 0
            if len(self.buf) < self.need:
                return
            del self.buf[: self.need]
            self.need = None
            self.transport.write(UPSTREAM_RESPONSE)  # type: ignore[attr-defined]


def serve_upstream(port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_UpstreamProtocol, "127.0.0.1", port, backlog=1024)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    uvloop.run(main())


# --- process plumbing ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up in {timeout}s") from None
            time.sleep(0.1)


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {port} did not open in {timeout}s") from None
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def manage(base: str, token: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


# --- load ------------------------------------------------------------------------------------

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNIT[m.group(2)]


def run_wrk(url: str, token: str | None, connections: int, duration: float, workdir: Path) -> dict:
    script = workdir / "post.lua"
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"\n' if token else ""
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(REQUEST_BODY.decode())}\n"
        'wrk.headers["Content-Type"] = "application/json"\n' + auth
    )
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    dist = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": total,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": _ms(dist["50"]),
        "p99": _ms(dist["99"]),
        "errors": int(bad.group(1)) if bad else 0,
    }


async def _aiohttp_load(url: str, token: str | None, connections: int, duration: float) -> dict:
    import aiohttp

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async with session.post(url, data=REQUEST_BODY, headers=headers) as resp:
                await resp.read()
                errors += resp.status != 200
            latencies.append((time.perf_counter() - t0) * 1000)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "rps": n / elapsed,
        "p50": latencies[n // 2],
        "p99": latencies[min(n - 1, int(n * 0.99))],
        "errors": errors,
    }


def run_load(url: str, token: str | None, connections: int, duration: float, workdir: Path) -> dict:
    if shutil.which("wrk"):
        return run_wrk(url, token, connections, duration, workdir)
    return asyncio.run(_aiohttp_load(url, token, connections, duration))


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    ap.add_argument("--connections", default="1,32", help="comma list of concurrency levels")
    ap.add_argument("--events", action="store_true", help="also write the JSONL event log (observers on)")
    ap.add_argument("--profile", metavar="FILE", help="run the proxy under cProfile, stats written to FILE")
    ap.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0

    levels = [int(c) for c in args.connections.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="llmproxy-bench-"))
    up_port, proxy_port = free_port(), free_port()
    mgmt = secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "LISTEN_ADDR": f"127.0.0.1:{proxy_port}",
        "MANAGEMENT_TOKEN": mgmt,
        "DATABASE_URL": f"sqlite:///{workdir}/bench.db",
        "UPSTREAM_BASE_URL": f"http://127.0.0.1:{up_port}",
        "AUDIT_LOG_FILE": str(workdir / "audit.log"),
        "LOG_LEVEL": "warning",
        "ENABLE_METRICS": "true",
    }
    if args.events:
        env["FILE_EVENT_LOG"] = str(workdir / "events.jsonl")
    children: list[subprocess.Popen[bytes]] = []
    try:
        upstream = subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(up_port)])
        children.append(upstream)
        wait_port(up_port)
        cli = shutil.which("llm-proxy", path=str(Path(sys.executable).parent)) or "llm-proxy"
        command = [cli, "server"]
        if args.profile:
            command = [sys.executable, "-m", "cProfile", "-o", args.profile, "-m", "llmproxy", "server"]
        proxy = subprocess.Popen(command, env=env, cwd=workdir)
        children.append(proxy)
        base = f"http://127.0.0.1:{proxy_port}"
        wait_http(base + "/health")
        project = manage(
            base, mgmt, "/manage/projects", {"name": "bench", "api_key": "sk-bench-upstream-key"}
        )
        token = manage(base, mgmt, "/manage/tokens", {"project_id": project["id"]})["token"]

        run_load(base + PATH, token, 8, 2.0, workdir)  # warm-up: pools, caches, JIT-less but still
        rows = []
        for c in levels:
            direct = run_load(f"http://127.0.0.1:{up_port}{PATH}", None, c, args.duration, workdir)
            before = cpu_seconds(proxy.pid)
            proxied = run_load(base + PATH, token, c, args.duration, workdir)
            cpu_us = (cpu_seconds(proxy.pid) - before) / max(proxied["requests"], 1) * 1e6
            rows.append((c, direct, proxied, cpu_us))
    finally:
        for child in reversed(children):  # the proxy drains first, then its upstream goes
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    tool = "wrk" if shutil.which("wrk") else "aiohttp client"
    print(
        f"\nnon-streamed chat completion, {args.duration:.0f}s per run, load from {tool}, {os.cpu_count()} CPUs"
    )
    print(
        f"{'c':>3} {'target':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'proxy CPU µs/req':>17}"
    )
    for c, direct, proxied, cpu_us in rows:
        for name, r, cpu in (("direct", direct, ""), ("proxy", proxied, f"{cpu_us:.0f}")):
            print(
                f"{c:>3} {name:<8} {r['rps']:>9.0f} {r['p50']:>8.3f} {r['p99']:>8.3f} {r['errors']:>6} {cpu:>17}"
            )
        print(
            f"{'':>3} {'added':<8} {'':>9} {proxied['p50'] - direct['p50']:>8.3f} {proxied['p99'] - direct['p99']:>8.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
