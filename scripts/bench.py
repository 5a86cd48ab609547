#!/usr/bin/env python3
"""Throughput, latency and CPU per request of the proxy hot path; never part of the test suite.

Starts, as separate processes: a fast fake upstream (raw uvloop protocol answering a fixed chat
completion, or an SSE stream when the request asks for one) and the real `llm-proxy server`
(temporary SQLite store, a project and a token created through the management API). Then drives
the same non-streamed chat completion at c=1 and c=32, directly against the upstream and through
the proxy, with `wrk` (or an aiohttp client if wrk is missing), and prints req/s, p50/p99 and the
proxy's CPU µs per request: utime+stime from /proc of the server and every process under it
(dispatcher workers included), after the event log has caught up with the load.

    .venv/bin/python scripts/bench.py [--duration 10] [--connections 1,32] [--events]
        [--bus in-memory|redis-streams] [--workers 1] [--matrix] [--repeat 3] [--stream]
        [--cache in-memory|redis] [--pin] [--json F]

--matrix runs the three event-pipeline configurations of docs/performance.md one after another:
none (in-memory bus, no dispatcher: no observer), memory+file (file dispatcher in-process),
streams+worker (redis-streams bus, one file worker process). --repeat N reports medians.
--cache turns the HTTP cache on and adds, per concurrency level, a run where every request is a hit
and one where every request is a miss (numbered bodies, `Cache-Control: max-age=300`).
--pin runs the proxy (and its workers) on the first CPU it may use and everything else, Redis
included, on the others: "one core" without wrk and the fake upstream competing for it.
It ends with three machine references: ns per plain Python loop iteration, CPU µs per bare aiohttp
client request and CPU µs per request through the proxy's own upstream pool, so figures from
different machines (or hours) can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager, contextmanager
from pathlib import Path

from llmproxy.loop import run_loop  # uvloop where installed

ROOT = Path(__file__).resolve().parent.parent
PATH = "/v1/chat/completions"
REQUEST_BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello in one word."}],
        "max_tokens": 5,
    }
).encode()
NUMBERED_AFTER = "one word."  # where a cache-miss run puts each request's number into REQUEST_BODY
STREAM_BODY = json.dumps({**json.loads(REQUEST_BODY), "stream": True}).encode()
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
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nx-request-id: req_bench\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
STREAM_GAP_S = 0.02  # the fake upstream's pause between SSE events (a model "thinking")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _sse_events() -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "gpt-4o-mini-2024-07-18"}  # fmt: skip
    deltas = [{"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"}, {"content": "!"}]
    events = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({**base, "choices": [], "usage": {"prompt_tokens": 13, "completion_tokens": 3,
                                                      "total_tokens": 16}})  # fmt: skip
    lines = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
    return [f"{len(line):x}\r\n".encode() + line + b"\r\n" for line in lines]


SSE_CHUNKS = _sse_events()


# --- the fake upstream (runs in its own process: `bench.py --serve-upstream PORT`) ----------------


class _UpstreamProtocol(asyncio.Protocol):
    """Minimal HTTP/1.1 keep-alive server: reads a request (Content-Length bodies), answers at once.

    A body asking for `"stream": true` gets an SSE stream: the first event at once, the rest
    STREAM_GAP_S apart, so a proxy that buffered would show it in the time to the first chunk.
    """

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
            stream = re.search(rb'"stream"\s*:\s*true', self.buf[: self.need]) is not None
            del self.buf[: self.need]
            self.need = None
            if stream:
                self._stream()
            else:
                self.transport.write(UPSTREAM_RESPONSE)  # type: ignore[attr-defined]

    def _stream(self) -> None:
        loop = asyncio.get_running_loop()
        transport = self.transport
        transport.write(STREAM_HEAD + SSE_CHUNKS[0])  # type: ignore[attr-defined]
        rest = [*SSE_CHUNKS[1:], b"0\r\n\r\n"]
        for i, chunk in enumerate(rest, 1):
            loop.call_later(i * STREAM_GAP_S, lambda c=chunk: transport.is_closing() or transport.write(c))


def serve_upstream(port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_UpstreamProtocol, "127.0.0.1", port, backlog=1024)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    run_loop(main())


# --- process plumbing ------------------------------------------------------------------------


@contextmanager
def fake_upstream() -> Iterator[int]:
    """The fake upstream in a process of its own (``bench.py --serve-upstream``); yields its port."""
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve-upstream", str(port)]
    )
    try:
        wait_port(port)
        yield port
    finally:
        upstream.send_signal(signal.SIGTERM)
        try:
            upstream.wait(timeout=10)
        except subprocess.TimeoutExpired:
            upstream.kill()
            upstream.wait()


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


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and every live process below it (workers, multiprocessing helpers)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[1])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid and p not in tree]
        tree.update(children)
        frontier += children
    result = {}
    for pid in tree:
        try:
            result[pid] = cpu_seconds(pid)
        except OSError:
            pass  # exited between the scan and the read
    return result


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    """Seconds used between two snapshots; a process born in between counts whole."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def manage(base: str, token: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=60) as resp:  # 60: a server under valgrind is slow
        return json.loads(resp.read())


def count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def settle(path: Path | None, quiet_s: float = 1.5, timeout: float = 60.0) -> None:
    """Wait until the event log stops growing (the dispatcher caught up with the load), bounded."""
    if path is None:
        return
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else 0
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.1)


# --- load ------------------------------------------------------------------------------------

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNIT[m.group(2)]


def run_wrk(
    url: str,
    token: str | None,
    connections: int,
    duration: float,
    workdir: Path,
    headers: dict[str, str] | None = None,
    unique: bool = False,
) -> dict:
    """wrk with the benchmark's POST; `unique` numbers each request's body (every one a cache miss)."""
    script = workdir / "post.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(REQUEST_BODY.decode())}",
             'wrk.headers["Content-Type"] = "application/json"']  # fmt: skip
    if token:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {token}"')
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in (headers or {}).items()]
    if unique:
        head, tail = REQUEST_BODY.decode().split(NUMBERED_AFTER, 1)
        run = uuid.uuid4().hex[:8]  # per run: a later run must not hit what an earlier one stored
        lines += ["n = 0", "request = function()", "  n = n + 1",
                  f"  return wrk.format(nil, nil, nil, {json.dumps(f'{head}{NUMBERED_AFTER} {run}-#')} .. n .. {json.dumps(tail)})",
                  "end"]  # fmt: skip
    script.write_text("\n".join(lines) + "\n")
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


async def _aiohttp_load(
    url: str,
    token: str | None,
    connections: int,
    duration: float,
    extra_headers: dict[str, str] | None = None,
    unique: bool = False,
) -> dict:
    """What run_wrk measures, with an aiohttp client (slower: fine for correctness, rough for figures)."""
    import aiohttp

    headers = {"Content-Type": "application/json", **(extra_headers or {})}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    latencies: list[float] = []
    errors = 0
    sent = 0
    run = uuid.uuid4().hex[:8]  # as in run_wrk: a later run must not hit what an earlier one stored
    deadline = time.perf_counter() + duration

    def body() -> bytes:
        nonlocal sent
        sent += 1
        return (
            REQUEST_BODY.replace(NUMBERED_AFTER.encode(), f"{NUMBERED_AFTER} {run}-{sent}".encode())
            if unique
            else REQUEST_BODY
        )

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async with session.post(url, data=body(), headers=headers) as resp:
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


def run_load(
    url: str,
    token: str | None,
    connections: int,
    duration: float,
    workdir: Path,
    headers: dict[str, str] | None = None,
    unique: bool = False,
) -> dict:
    """wrk if installed, else an aiohttp client; `unique` numbers each request's body."""
    if shutil.which("wrk"):
        return run_wrk(url, token, connections, duration, workdir, headers, unique)
    return asyncio.run(_aiohttp_load(url, token, connections, duration, headers, unique))


One = Callable[[], Awaitable[None]]


def _cpu_per_request(client: Callable[[], AbstractAsyncContextManager[One]], n: int) -> float:
    """CPU µs per request made by the ``one`` that ``client()`` yields: sequential, after 200 warm-up
    requests, on the loop the proxy itself runs on."""

    async def main() -> float:
        async with client() as one:
            for _ in range(200):
                await one()
            cpu0 = time.process_time()
            for _ in range(n):
                await one()
            return (time.process_time() - cpu0) / n * 1e6

    return run_loop(main())


def aiohttp_client_reference(port: int, n: int = 3000) -> float:
    """CPU µs of one bare aiohttp client request to the fake upstream, sequential, keep-alive: the
    floor under any aiohttp proxy (which also parses the request and writes the answer) on this machine."""
    import aiohttp

    @asynccontextmanager
    async def client() -> AsyncIterator[One]:
        async with aiohttp.ClientSession() as session:

            async def one() -> None:
                async with session.post(f"http://127.0.0.1:{port}{PATH}", data=REQUEST_BODY,
                                        headers={"Content-Type": "application/json"}) as resp:  # fmt: skip
                    await resp.read()

            yield one

    return _cpu_per_request(client, n)


def pool_client_reference(port: int, n: int = 3000) -> float:
    """CPU µs of one request through the proxy's own upstream pool (llmproxy.proxy.pool), same shape as
    ``aiohttp_client_reference``: what the proxy pays for its upstream side instead."""
    from llmproxy.config import ApiConfig
    from llmproxy.proxy.pool import UpstreamPool

    @asynccontextmanager
    async def client() -> AsyncIterator[One]:
        async with aclosing(UpstreamPool(ApiConfig())) as pool:

            async def one() -> None:
                resp = await pool.request("POST", f"http://127.0.0.1:{port}", PATH,
                                          [("Content-Type", "application/json")], REQUEST_BODY)  # fmt: skip
                while await resp.readany():
                    pass
                resp.release()

            yield one

    return _cpu_per_request(client, n)


async def _stream_times(port: int, token: str | None, count: int) -> dict:
    """Sequential streamed completions on one keep-alive connection: median ms to the first SSE
    event and to the end of the stream, measured from the moment the request was written."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {len(STREAM_BODY)}\r\n\r\n"
    ).encode() + STREAM_BODY
    first, last = [], []
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200") or b"chunked" not in head.lower():
                raise RuntimeError(f"unexpected stream response: {head[:200]!r}")
            t_first = None
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                if t_first is None and b"data:" in data:
                    t_first = time.perf_counter()
                if size == 0:
                    break
            first.append((t_first - t0) * 1000)  # type: ignore[operator]
            last.append((time.perf_counter() - t0) * 1000)
    finally:
        writer.close()
    return {"first_ms": statistics.median(first), "last_ms": statistics.median(last), "streams": count}


# --- one configuration -----------------------------------------------------------------------

CONFIGS = {  # name -> (bus, file event log on)
    "none": ("in-memory", False),
    "memory+file": ("in-memory", True),
    "streams+worker": ("redis-streams", True),
}


@contextmanager
def proxy_server(
    bus: str,
    events: bool,
    workers: int,
    up_port: int,
    cache: str | None = None,
    cpus: set[int] | None = None,
    launcher: list[str] | None = None,
    start_timeout: float = 30.0,
    extra_env: dict[str, str] | None = None,
    token_limits: dict[str, object] | None = None,
) -> Iterator[dict]:
    """A running `llm-proxy server` with a project and token; its Redis keys are deleted afterwards.
    ``launcher`` runs ``-m llmproxy server`` instead of the `llm-proxy` script: a Python interpreter,
    with what wraps it (cProfile after it, valgrind before it). ``extra_env`` adds to its environment;
    ``token_limits`` are the bench token's (e.g. ``{"rate_limit_per_minute": 10**9}``)."""
    workdir = Path(tempfile.mkdtemp(prefix="llmproxy-bench-"))
    proxy_port = free_port()
    mgmt = secrets.token_urlsafe(24)
    stream_key = f"bench:{uuid.uuid4().hex}:events"
    env = {
        **os.environ,
        "LISTEN_ADDR": f"127.0.0.1:{proxy_port}",
        "MANAGEMENT_TOKEN": mgmt,
        "DATABASE_URL": f"sqlite:///{workdir}/bench.db",
        "UPSTREAM_BASE_URL": f"http://127.0.0.1:{up_port}",
        "AUDIT_LOG_FILE": str(workdir / "audit.log"),
        "LOG_LEVEL": "warning",
        "ENABLE_METRICS": "true",
        "LLM_PROXY_EVENT_BUS": bus,
    }
    if bus != "in-memory":
        env |= {"REDIS_STREAM_KEY": stream_key, "REDIS_CONSUMER_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
                "DISPATCHER_WORKERS": str(workers)}  # fmt: skip
    cache_prefix = f"bench:{uuid.uuid4().hex}:cache:"
    if cache:
        env |= {
            "HTTP_CACHE_ENABLED": "true",
            "HTTP_CACHE_BACKEND": cache,
            "REDIS_CACHE_KEY_PREFIX": cache_prefix,
        }
    event_log = workdir / "events.jsonl" if events else None
    if event_log is not None:
        env["FILE_EVENT_LOG"] = str(event_log)
        env["DISPATCHER_SERVICES"] = "file"
    env |= extra_env or {}
    cli = shutil.which("llm-proxy", path=str(Path(sys.executable).parent)) or "llm-proxy"
    command = [*launcher, "-m", "llmproxy", "server"] if launcher else [cli, "server"]
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None  # before exec: its workers inherit it
    proxy = subprocess.Popen(command, env=env, cwd=workdir, preexec_fn=pin)
    try:
        base = f"http://127.0.0.1:{proxy_port}"
        wait_http(base + "/health", start_timeout)
        project = manage(
            base, mgmt, "/manage/projects", {"name": "bench", "api_key": "sk-bench-upstream-key"}
        )
        made = {"project_id": project["id"], **(token_limits or {})}
        token = manage(base, mgmt, "/manage/tokens", made)["token"]
        yield {"pid": proxy.pid, "base": base, "port": proxy_port, "token": token, "event_log": event_log,
               "workdir": workdir}  # fmt: skip
    finally:
        proxy.send_signal(signal.SIGTERM)  # it stops its workers and drains first
        try:
            proxy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()
        if bus != "in-memory":
            subprocess.run(["redis-cli", "DEL", stream_key, f"{stream_key}:dead", f"{stream_key}:dispatcher-stats"],
                           capture_output=True, check=False)  # fmt: skip
        if cache == "redis":
            subprocess.run(["sh", "-c", f"redis-cli --scan --pattern '{cache_prefix}*' | xargs -r redis-cli UNLINK"],
                           capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(workdir, ignore_errors=True)


def redis_pid() -> int | None:
    """The pid of the Redis at 127.0.0.1:6379 (the one the benchmarks use), if it says."""
    import redis

    try:
        return int(redis.Redis().info("server")["process_id"])
    except Exception:
        return None


def pin_away_from_proxy() -> tuple[set[int], Callable[[], None]]:
    """Of the CPUs this process may use, the first for the proxy; this process (so wrk and the fake
    upstream) and the benchmarks' Redis onto the others. Returns (the proxy's CPUs, what puts Redis back)."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    proxy, others = {allowed[0]}, set(allowed[1:])
    os.sched_setaffinity(0, others)
    pid = redis_pid()
    tasks = Path(f"/proc/{pid}/task")
    saved: dict[int, set[int]] = {}
    for task in map(int, os.listdir(tasks)) if pid is not None and tasks.is_dir() else ():
        try:  # every thread of it (io threads too)
            saved[task] = os.sched_getaffinity(task)
            os.sched_setaffinity(task, others)
        except OSError as exc:  # not ours to move: it stays where it is, noted
            print(f"bench: cannot pin redis-server thread {task}: {exc}", file=sys.stderr)

    def restore() -> None:
        for task, cpus in saved.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(task, cpus)

    return proxy, restore


def run_config(name: str, bus: str, events: bool, args: argparse.Namespace, up_port: int) -> dict:
    levels = [int(c) for c in args.connections.split(",")]
    result: dict = {"config": name, "bus": bus, "events": events, "levels": {}}
    profiled = [sys.executable, "-m", "cProfile", "-o", args.profile] if args.profile else None
    limits = {"rate_limit_per_minute": args.rate_limit} if args.rate_limit else None
    with proxy_server(
        bus, events, args.workers, up_port, args.cache, args.proxy_cpus, profiled, token_limits=limits
    ) as px:
        run_load(px["base"] + PATH, px["token"], 8, 2.0, px["workdir"])  # warm-up: pools, caches
        settle(px["event_log"])
        for c in levels:
            direct = run_load(f"http://127.0.0.1:{up_port}{PATH}", None, c, args.duration, px["workdir"])
            before = tree_cpu(px["pid"])
            proxied = run_load(px["base"] + PATH, px["token"], c, args.duration, px["workdir"])
            settle(px["event_log"])  # the workers' share of these requests is done before we read CPU
            after = tree_cpu(px["pid"])
            n = max(proxied["requests"], 1)
            proxied["cpu_us"] = cpu_spent(before, after) / n * 1e6
            proxied["cpu_us_server"] = (after[px["pid"]] - before[px["pid"]]) / n * 1e6
            proxied["processes"] = len(after)
            result["levels"][c] = {"direct": direct, "proxy": proxied}
        if args.cache:
            result["cache"] = {c: cache_runs(px, c, args.duration) for c in levels}
        if args.stream:
            asyncio.run(_stream_times(px["port"], px["token"], 5))  # warm-up
            result["stream"] = {
                "direct": asyncio.run(_stream_times(up_port, None, args.stream_count)),
                "proxy": asyncio.run(_stream_times(px["port"], px["token"], args.stream_count)),
            }
        if px["event_log"] is not None:
            settle(px["event_log"])
            result["event_lines"] = count_lines(px["event_log"])
    return result


def cache_runs(px: dict, c: int, duration: float) -> dict:
    """CPU µs per request when every request is a cache hit, then when every one is a miss (and a store)."""
    url, cacheable = px["base"] + PATH, {"Cache-Control": "max-age=300"}
    out = {}
    run_load(url, px["token"], 1, 1, px["workdir"], cacheable)  # stores the one answer the hit run asks for
    for kind, unique in (("hit", False), ("miss", True)):
        before = tree_cpu(px["pid"])
        load = run_load(url, px["token"], c, duration, px["workdir"], cacheable, unique=unique)
        after = tree_cpu(px["pid"])
        load["cpu_us"] = cpu_spent(before, after) / max(load["requests"], 1) * 1e6
        out[kind] = load
    return out


# --- reporting -------------------------------------------------------------------------------


def _median(runs: list[dict], *keys: str) -> float:
    values = []
    for run in runs:
        for key in keys:
            run = run[key]
        values.append(run)
    return statistics.median(values)


def summarize(name: str, runs: list[dict]) -> dict:
    """Medians over the repetitions of one configuration."""
    out: dict = {"config": name, "runs": len(runs), "levels": {}}
    for c in runs[0]["levels"]:
        lv = [r["levels"][c] for r in runs]
        row = {t: {k: _median(lv, t, k) for k in ("rps", "p50", "p99")} for t in ("direct", "proxy")}
        row["proxy"]["cpu_us"] = _median(lv, "proxy", "cpu_us")
        row["proxy"]["cpu_us_server"] = _median(lv, "proxy", "cpu_us_server")
        row["proxy"]["cpu_us_all"] = [round(x["proxy"]["cpu_us"]) for x in lv]
        row["errors"] = sum(x["proxy"]["errors"] + x["direct"]["errors"] for x in lv)
        row["added_p50"] = statistics.median(x["proxy"]["p50"] - x["direct"]["p50"] for x in lv)
        row["added_p99"] = statistics.median(x["proxy"]["p99"] - x["direct"]["p99"] for x in lv)
        out["levels"][c] = row
    if "cache" in runs[0]:
        out["cache"] = {c: {kind: {k: _median([r["cache"][c] for r in runs], kind, k) for k in ("rps", "p50", "cpu_us")}
                            for kind in ("hit", "miss")} for c in runs[0]["cache"]}  # fmt: skip
    if "stream" in runs[0]:
        out["stream"] = {t: {k: _median(runs, "stream", t, k) for k in ("first_ms", "last_ms")}
                         for t in ("direct", "proxy")}  # fmt: skip
    return out


def print_summary(summary: dict, duration: float) -> None:
    tool = "wrk" if shutil.which("wrk") else "aiohttp client"
    print(f"\n[{summary['config']}] non-streamed chat completion, {duration:.0f}s per run, "
          f"median of {summary['runs']}, load from {tool}, {os.cpu_count()} CPUs")  # fmt: skip
    print(
        f"{'c':>3} {'target':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'proxy CPU µs/req':>17}"
    )
    for c, row in summary["levels"].items():
        d, p = row["direct"], row["proxy"]
        print(f"{c:>3} {'direct':<8} {d['rps']:>9.0f} {d['p50']:>8.3f} {d['p99']:>8.3f} {'':>6}")
        print(f"{c:>3} {'proxy':<8} {p['rps']:>9.0f} {p['p50']:>8.3f} {p['p99']:>8.3f} {row['errors']:>6} "
              f"{p['cpu_us']:>17.0f}  (server {p['cpu_us_server']:.0f}; runs: {p['cpu_us_all']})")  # fmt: skip
        print(f"{'':>3} {'added':<8} {'':>9} {row['added_p50']:>8.3f} {row['added_p99']:>8.3f}")
    for c, kinds in summary.get("cache", {}).items():
        for kind, r in kinds.items():
            print(
                f"{c:>3} {'cache ' + kind:<10} {r['rps']:>7.0f} {r['p50']:>8.3f} {'':>8} {'':>6} {r['cpu_us']:>17.0f}"
            )
    if "stream" in summary:
        s = summary["stream"]
        print(f"    stream: first event {s['direct']['first_ms']:.2f} ms direct, {s['proxy']['first_ms']:.2f} ms "
              f"proxied; whole stream {s['direct']['last_ms']:.1f} / {s['proxy']['last_ms']:.1f} ms "
              f"(upstream sends {len(SSE_CHUNKS)} events {STREAM_GAP_S * 1000:.0f} ms apart)")  # fmt: skip


# --- main ------------------------------------------------------------------------------------


def interpreter_speed() -> float:
    """ns per iteration of a plain `s += i` loop: how fast this machine runs Python, so CPU µs per
    request measured on different machines can be compared (about 45-50 ns on a recent desktop core)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        s = 0
        for i in range(2_000_000):
            s += i
        best = min(best, time.perf_counter() - t0)
    return best / 2_000_000 * 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    ap.add_argument("--connections", default="1,32", help="comma list of concurrency levels")
    ap.add_argument("--events", action="store_true", help="also write the JSONL event log (observers on)")
    ap.add_argument("--bus", choices=("in-memory", "redis-streams"), default="in-memory",
                    help="LLM_PROXY_EVENT_BUS (redis-streams with --events: file worker processes)")  # fmt: skip
    ap.add_argument(
        "--workers", type=int, default=1, help="DISPATCHER_WORKERS with redis-streams (default 1)"
    )
    ap.add_argument(
        "--matrix", action="store_true", help="run the configurations none, memory+file, streams+worker"
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs per configuration; medians are reported")
    ap.add_argument("--cache", choices=("in-memory", "redis"),
                    help="HTTP cache on with this backend; adds runs where every request hits, then misses")  # fmt: skip
    ap.add_argument("--stream", action="store_true", help="also time the first SSE event, direct vs proxied")
    ap.add_argument("--stream-count", type=int, default=50, help="streamed requests per target (default 50)")
    ap.add_argument("--json", metavar="FILE", help="write every run and the medians to FILE")
    ap.add_argument("--profile", metavar="FILE", help="run the proxy under cProfile, stats written to FILE")
    ap.add_argument("--pin", action="store_true",
                    help="the proxy and its workers on the first allowed CPU, everything else (wrk, the fake upstream, Redis) on "
                         "the other CPUs: the proxy's figures on one core, without the load generator beside it")  # fmt: skip
    ap.add_argument("--rate-limit", type=int, default=0,
                    help="the token's rate_limit_per_minute (default none); RATE_LIMIT_BACKEND=redis and REDIS_ADDR in "
                         "the environment make each request take the shared limiter's Redis round trip")  # fmt: skip
    ap.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0

    if args.matrix:
        configs = list(CONFIGS.items())
    else:
        name = {v: k for k, v in CONFIGS.items()}.get((args.bus, args.events), f"{args.bus}, no dispatcher")
        configs = [(name, (args.bus, args.events))]
    args.proxy_cpus, restore = pin_away_from_proxy() if args.pin else (None, None)
    runs: dict[str, list[dict]] = {name: [] for name, _ in configs}
    try:
        with fake_upstream() as up_port:
            for i in range(args.repeat):  # round-robin, so a noisy minute does not hit one config only
                for name, (bus, events) in configs:
                    print(f"run {i + 1}/{args.repeat}: {name}", file=sys.stderr, flush=True)
                    runs[name].append(run_config(name, bus, events, args, up_port))
            summaries = [summarize(name, r) for name, r in runs.items()]
            speed, client_us = interpreter_speed(), aiohttp_client_reference(up_port)
            pool_us = pool_client_reference(up_port)
    finally:
        if restore is not None:
            restore()

    if args.proxy_cpus:
        print(f"\npinned: the proxy and its workers on CPU {sorted(args.proxy_cpus)}; wrk, the fake upstream and "
              "Redis on the others")  # fmt: skip
    print(f"\nmachine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; reference: {speed:.0f} ns per "
          f"`s += i` loop iteration, {client_us:.0f} µs CPU per bare aiohttp client request (lower is faster); "
          f"the proxy's upstream pool: {pool_us:.0f} µs per request")  # fmt: skip
    for summary in summaries:
        print_summary(summary, args.duration)
    if args.json:
        loadavg = Path("/proc/loadavg").read_text().split()[:3]
        doc = {"duration": args.duration, "cpus": os.cpu_count(), "loadavg_after": loadavg, "loop_ns": speed,
               "aiohttp_client_us": client_us, "pool_client_us": pool_us,
               "proxy_cpus": sorted(args.proxy_cpus or ()), "summaries": summaries, "runs": runs}  # fmt: skip
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
