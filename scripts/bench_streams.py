#!/usr/bin/env python3
"""How many open SSE streams one `llm-proxy server` holds, and what each costs; never part of the suite.

LLM calls last seconds to minutes, so an instance is bounded by the streams it holds open, not by
requests per second. This opens N concurrent streamed chat completions through the real server (in-
memory bus, JSONL event log, a project and token made over /manage) against a fake upstream that sends
one SSE chunk a second for ``--seconds`` (60) per stream, and reports:

- server RSS per open stream: (RSS with all N open, at its highest) - (RSS idle, after a warm-up), / N;
- event-loop lag: p50/p99/max of a tiny GET /health every 100 ms during the run (its round trip, the
  same probe sent to the fake upstream shown as the floor), and the server's own
  ``llm_proxy_event_loop_lag_seconds`` histogram over the run;
- added time to the first chunk: p50/p99 through the proxy minus p50/p99 direct to the upstream, both
  measured from before connect() to the first ``data:`` byte. One stream in ten goes direct, interleaved
  with the proxied ones, so both meet the same client and upstream load at the same moments;
- the server's open fds at the plateau, and that every proxied stream's event is in the JSONL log.

Connections are opened at ``--rate`` (500) proxied streams a second, so N=10,000 is fully open after
20 s and held for the rest of the minute. The load comes from ``--clients`` processes (uvloop, a raw
asyncio protocol per stream); the fake upstream is one uvloop process whose streams each tick on their
own 1 s timer (so the chunks are spread as evenly as the connections were). Every process raises its
RLIMIT_NOFILE soft limit to the hard limit; the server needs 2 fds per stream (client + upstream).
The pool limit ``max_connections`` is set explicitly (``--max-connections``, default N) so no stream
waits for an upstream slot.

    .venv/bin/python scripts/bench_streams.py --streams 1000,5000,10000 [--seconds 60] [--rate 500]
        [--clients K] [--max-connections M] [--json F]
    .venv/bin/python scripts/bench_streams.py --quick      # 50 streams of 2 s: the smoke test's run

Exit status 1 when a proxied stream did not complete or its event is missing from the log.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import bench  # scripts/bench.py, beside this script: the fake upstream, process plumbing
from bench import PATH, STREAM_HEAD, free_port, proxy_server, settle, wait_port

from llmproxy.loop import run_loop

DIRECT_EVERY = 10  # one direct stream per this many proxied: the TTFB baseline under the same load


def raise_fd_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (what an unprivileged process may do); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --- the fake upstream: one chunk a second (`bench_streams.py --serve-upstream PORT`) -------------


def _chunk(event: dict) -> bytes:
    line = b"data: " + json.dumps(event).encode() + b"\n\n"
    return f"{len(line):x}\r\n".encode() + line + b"\r\n"


_BASE = {"id": "chatcmpl-streams", "object": "chat.completion.chunk", "created": 1700000000,
         "model": "gpt-4o-mini-2024-07-18"}  # fmt: skip
FIRST_CHUNK = _chunk({**_BASE, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})


def token_chunk(size: int = 0) -> bytes:
    """One content event; with ``size``, its text padded so the event is about ``size`` bytes."""
    event = {**_BASE, "choices": [{"index": 0, "delta": {"content": " word"}, "finish_reason": None}]}
    pad = size - len(_chunk(event))
    if pad > 0:
        event["choices"][0]["delta"]["content"] = " word" + "x" * pad
    return _chunk(event)


TOKEN_CHUNK = token_chunk()
LAST_CHUNKS = (
    _chunk({**_BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    + _chunk(
        {**_BASE, "choices": [], "usage": {"prompt_tokens": 13, "completion_tokens": 60, "total_tokens": 73}}
    )
    + b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
)


class _SlowStream(bench._UpstreamProtocol):
    """bench.py's fake upstream, whose streams last ``seconds``: the first event at once, then one a
    ``gap``, each stream on its own timer from its own start (drift-free: ``call_at``)."""

    seconds = 60.0
    gap = 1.0
    token = TOKEN_CHUNK

    def _stream(self) -> None:
        loop = asyncio.get_running_loop()
        transport = self.transport
        transport.write(STREAM_HEAD + FIRST_CHUNK)  # type: ignore[attr-defined]
        start, ticks = loop.time(), max(1, round(self.seconds / self.gap))

        def tick(i: int) -> None:
            if transport.is_closing():
                return
            if i < ticks:
                transport.write(self.token)  # type: ignore[attr-defined]
                loop.call_at(start + (i + 1) * self.gap, tick, i + 1)
            else:
                transport.write(LAST_CHUNKS)  # type: ignore[attr-defined]

        loop.call_at(start + self.gap, tick, 1)


def serve_upstream(port: int, seconds: float, gap: float, chunk_bytes: int) -> None:
    raise_fd_limit()
    _SlowStream.seconds, _SlowStream.gap, _SlowStream.token = seconds, gap, token_chunk(chunk_bytes)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_SlowStream, "127.0.0.1", port, backlog=4096)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    run_loop(main())


@contextmanager
def slow_upstream(seconds: float, gap: float, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """The fake upstream in a process of its own; yields (port, pid)."""
    port = free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "--serve-upstream", str(port),
               "--seconds", str(seconds), "--gap", str(gap), "--chunk-bytes", str(chunk_bytes)]  # fmt: skip
    upstream = subprocess.Popen(command)
    try:
        wait_port(port)
        yield port, upstream.pid
    finally:
        upstream.send_signal(signal.SIGTERM)
        try:
            upstream.wait(timeout=10)
        except subprocess.TimeoutExpired:
            upstream.kill()
            upstream.wait()


# --- the clients: processes of raw asyncio protocols -----------------------------------------------

# one result per stream: (id, direct, status, ttfb_s, chunks, complete, error)
Result = tuple[str, bool, int, float | None, int, bool, str | None]


class _StreamClient(asyncio.Protocol):
    """One streamed request; notes the status, the time to the first ``data:`` and the chunks seen."""

    def __init__(self, request: bytes, started: float, done: asyncio.Future[None]) -> None:
        self.request, self.started, self.done = request, started, done
        self.head = b""
        self.status = 0
        self.ttfb: float | None = None
        self.events = 0
        self.tail = b""
        self.complete = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self.head[9:12])
            data, self.head = self.head[end + 4 :], b""
        if b"data: " in data:
            if self.ttfb is None:
                self.ttfb = time.monotonic() - self.started
            self.events += data.count(b"data: ")
        self.tail = (self.tail + data)[-8:]
        if self.tail.endswith(b"\r\n0\r\n\r\n"):
            self.complete = True
            self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _one(port: int, request: bytes, start_at: float, deadline: float) -> tuple:
    delay = start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    done: asyncio.Future[None] = loop.create_future()
    client = _StreamClient(request, started, done)
    error = None
    try:
        async with asyncio.timeout(deadline - time.monotonic()):
            await loop.create_connection(lambda: client, "127.0.0.1", port)
            await done
    except (OSError, TimeoutError) as exc:
        error = type(exc).__name__ + (f" {exc.errno}" if isinstance(exc, OSError) and exc.errno else "")
    if client.transport is not None:
        client.transport.close()
    if error is None and not client.complete:
        error = "cut short"
    return client.status, client.ttfb, client.events, client.complete, error


def _client_process(plan: list[tuple[str, bool, float]], ports: dict[bool, int], token: str,
                    deadline: float, out: multiprocessing.connection.Connection) -> None:  # fmt: skip
    """One load process: each (id, direct, start_at) of ``plan`` opened at its time; results to ``out``."""
    raise_fd_limit()
    body = json.dumps({"model": "gpt-4o-mini", "stream": True,
                       "messages": [{"role": "user", "content": "Tell me a long story."}]}).encode()  # fmt: skip

    def request(stream_id: str, direct: bool) -> bytes:
        auth = "" if direct else f"Authorization: Bearer {token}\r\n"
        return (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}"
                f"X-Request-ID: {stream_id}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode() + body  # fmt: skip

    async def main() -> list[Result]:
        runs = [_one(ports[direct], request(sid, direct), at, deadline) for sid, direct, at in plan]
        answers = await asyncio.gather(*runs)
        return [(sid, direct, *answer) for (sid, direct, _), answer in zip(plan, answers, strict=True)]

    out.send(run_loop(main()))
    out.close()


# --- what the orchestrating process watches ---------------------------------------------------------


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (all sockets)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Prober(threading.Thread):
    """GET /health (or any tiny request) every ``every`` s on one keep-alive connection: round trips."""

    def __init__(self, port: int, path: str, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.every = port, path, every
        self.samples: list[tuple[float, float]] = []  # (sent at, round trip)
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        next_at = time.monotonic()
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                conn.request("GET", self.path)
                conn.getresponse().read()
                self.samples.append((t0, time.monotonic() - t0))
            except (OSError, http.client.HTTPException):
                self.failures += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            next_at += self.every
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        conn.close()


def server_lag(base: str) -> dict:
    """The server's llm_proxy_event_loop_lag_seconds histogram, from /metrics (cumulative buckets), and
    its GC collections per generation (``gc``)."""
    import urllib.request

    with urllib.request.urlopen(base + "/metrics", timeout=30) as resp:
        document = json.loads(resp.read())
    return {**document["event_loop_lag"], "gc": [g["collections"] for g in document["process"]["gc"]]}


def lag_quantiles(before: dict, after: dict) -> dict:
    """Samples taken between two reads of the histogram, and the bucket bounds holding p50/p99/max."""
    counts = {b: after["buckets"][b] - before["buckets"].get(b, 0) for b in after["buckets"]}
    n = counts["+Inf"]

    def bound(q: float) -> str:
        need = max(1, math.ceil(q * n))
        return next((b for b, c in counts.items() if c >= need), "+Inf")

    return (
        {"samples": n, "p50_le": bound(0.5), "p99_le": bound(0.99), "max_le": bound(1.0)}
        if n
        else {"samples": 0}
    )


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def event_ids(path: Path) -> dict[str, tuple[int, bool]]:
    """request_id -> (status, stream) of every event in the JSONL log."""
    found: dict[str, tuple[int, bool]] = {}
    with path.open("rb") as f:
        for line in f:
            event = json.loads(line)
            found[event["request_id"]] = (event["status"], event["stream"])
    return found


# --- one run ------------------------------------------------------------------------------------------


def plan_streams(
    n: int, rate: float, clients: int, t0: float, run: str
) -> list[list[tuple[str, bool, float]]]:
    """Who opens what when: proxied stream i at t0 + i/rate, a direct one after every DIRECT_EVERY-th,
    dealt round-robin to the client processes."""
    streams: list[tuple[str, bool, float]] = []
    for i in range(n):
        streams.append((f"bs-{run}-{i}", False, t0 + i / rate))
        if i % DIRECT_EVERY == DIRECT_EVERY - 1:
            streams.append((f"bd-{run}-{i}", True, t0 + (i + 0.5) / rate))
    return [streams[k::clients] for k in range(clients)]


def run_streams(n: int, args: argparse.Namespace, up_port: int, up_pid: int) -> dict:
    clients = args.clients or max(1, min(8, math.ceil(n * (1 + 1 / DIRECT_EVERY) / 2500)))
    max_connections = args.max_connections or n
    workdir = Path(tempfile.mkdtemp(prefix="llmproxy-streams-"))
    api_config = workdir / "api_config.yaml"
    api_config.write_text(f"max_connections: {max_connections}\n")
    env = {"API_CONFIG_PATH": str(api_config), "OBSERVABILITY_BUFFER_SIZE": "10000"}
    with proxy_server("in-memory", not args.no_events, 1, up_port, extra_env=env) as px:
        pid, base = px["pid"], px["base"]
        # warm-up: a few streams cut after their first chunk (imports, the token cache, the pool)
        warm = plan_streams(20, 1000.0, 1, time.monotonic(), "warm")[0]
        _run_clients([[s for s in warm if not s[1]]], {False: px["port"], True: up_port}, px["token"],
                     time.monotonic() + 1.5)  # fmt: skip
        settle(px["event_log"], quiet_s=1.0, timeout=30)
        idle = []
        for _ in range(5):
            time.sleep(0.2)
            idle.append(rss_bytes(pid))
        idle_rss, idle_fds = statistics.median(idle), open_fds(pid)
        lag_before = server_lag(base)
        probes = [Prober(px["port"], "/health"), Prober(up_port, "/health")]
        for probe in probes:
            probe.start()

        run = uuid.uuid4().hex[:6]
        t0 = time.monotonic() + 2.0  # the client processes are spawned (imports) by then
        ramp = n / args.rate
        deadline = t0 + ramp + args.seconds + 60  # a stream still open then is counted as failed
        plans = plan_streams(n, args.rate, clients, t0, run)
        ports = {False: px["port"], True: up_port}
        box: dict[str, list[Result]] = {}
        loader = threading.Thread(
            daemon=True,  # Ctrl-C ends the run (the client processes are daemons too)
            target=lambda: box.update(results=_run_clients(plans, ports, px["token"], deadline)),
        )
        load0, overflows0 = os.getloadavg(), listen_overflows()
        cpu0 = bench.cpu_seconds(pid), bench.cpu_seconds(up_pid)
        loader.start()
        samples = []  # (t - t0, rss, fds)
        while loader.is_alive():
            loader.join(1.0)
            try:
                samples.append((time.monotonic() - t0, rss_bytes(pid), open_fds(pid), bench.cpu_seconds(pid)))
            except OSError:  # the server died
                break
        cpu1 = bench.cpu_seconds(pid), bench.cpu_seconds(up_pid)
        load1, overflows1 = os.getloadavg(), listen_overflows()
        for probe in probes:
            probe.stop.set()
            probe.join()
        lag_after = server_lag(base)
        results = box.get("results", [])
        settle(px["event_log"], quiet_s=1.0, timeout=120)
        logged = event_ids(px["event_log"]) if px["event_log"] and px["event_log"].exists() else {}
        after_rss = rss_bytes(pid)

    proxied = [r for r in results if not r[1]]
    direct = [r for r in results if r[1]]
    ok = [r for r in proxied if r[2] == 200 and r[5]]
    errors: dict[str, int] = {}
    for r in proxied:
        if not (r[2] == 200 and r[5]):
            key = r[6] or f"status {r[2]}"
            errors[key] = errors.get(key, 0) + 1
    missing = [] if args.no_events else [r[0] for r in proxied if logged.get(r[0]) != (200, True)]
    plateau = [s for s in samples if ramp + 1 <= s[0] <= args.seconds - 1] or samples
    peak_rss = max((s[1] for s in plateau), default=0)
    peak_fds = max((s[2] for s in samples), default=0)
    ttfb_p = [r[3] for r in ok if r[3] is not None]
    ttfb_d = [r[3] for r in direct if r[3] is not None and r[5]]
    probe_up = [rtt for _, rtt in probes[1].samples]
    hold_end = max(ramp, args.seconds - 1)
    phases = {"ramp": (t0, t0 + ramp), "hold": (t0 + ramp, t0 + hold_end), "run": (t0, t0 + hold_end)}
    lag_ms = {}
    for phase, (lo, hi) in phases.items():
        rtts = [rtt for at, rtt in probes[0].samples if lo <= at < hi]
        lag_ms[phase] = {"samples": len(rtts), "p50": (pct(rtts, 0.5) or 0) * 1000,
                         "p99": (pct(rtts, 0.99) or 0) * 1000, "max": max(rtts, default=0) * 1000}  # fmt: skip
    cpu_share = {}  # the server's CPU use, in cores, over each phase (from the 1 s samples)
    for phase, (lo, hi) in phases.items():
        inside = [x for x in samples if lo - t0 <= x[0] <= hi - t0]
        if len(inside) >= 2:
            cpu_share[phase] = (inside[-1][3] - inside[0][3]) / (inside[-1][0] - inside[0][0])
    expected_events = max(1, round(args.seconds / args.gap)) + 3  # role, a token a tick, stop, usage, [DONE]
    return {
        "streams": n,
        "events": not args.no_events,
        "clients": clients,
        "max_connections": max_connections,
        "rate": args.rate,
        "seconds": args.seconds,
        "chunk_bytes": len(token_chunk(args.chunk_bytes)),
        "completed": len(ok),
        "complete_with_every_chunk": sum(1 for r in ok if r[4] >= expected_events),
        "errors": errors,
        "direct_streams": len(direct),
        "direct_completed": sum(1 for r in direct if r[2] == 200 and r[5]),
        "idle_rss_mb": idle_rss / 2**20,
        "peak_rss_mb": peak_rss / 2**20,
        "after_rss_mb": after_rss / 2**20,
        "rss_kb_per_stream": (peak_rss - idle_rss) / 1024 / max(n, 1),
        "idle_fds": idle_fds,
        "peak_fds": peak_fds,
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE),
        "lag_probe_ms": lag_ms,
        "server_cpu_cores": cpu_share,
        "lag_probe_failures": probes[0].failures,
        "floor_probe_ms": {"p50": (pct(probe_up, 0.5) or 0) * 1000, "p99": (pct(probe_up, 0.99) or 0) * 1000},
        "server_lag": lag_quantiles(lag_before, lag_after),
        "gc_collections": [b - a for a, b in zip(lag_before["gc"], lag_after["gc"], strict=True)],
        "ttfb_ms": {
            "proxy_p50": (pct(ttfb_p, 0.5) or 0) * 1000,
            "proxy_p99": (pct(ttfb_p, 0.99) or 0) * 1000,
            "direct_p50": (pct(ttfb_d, 0.5) or 0) * 1000,
            "direct_p99": (pct(ttfb_d, 0.99) or 0) * 1000,
        },
        "events_logged": sum(1 for r in proxied if r[0] in logged),
        "events_missing": len(missing),
        "server_cpu_s": cpu1[0] - cpu0[0],
        "upstream_cpu_s": cpu1[1] - cpu0[1],
        "listen_overflows": overflows1 - overflows0,
        "loadavg_before": load0,
        "loadavg_after": load1,
        "samples": samples,
    }


def _run_clients(plans: list[list[tuple[str, bool, float]]], ports: dict[bool, int], token: str,
                 deadline: float) -> list[Result]:  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    for plan in plans:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_client_process, args=(plan, ports, token, deadline, child), daemon=True)
        proc.start()
        child.close()
        pipes.append(parent)
        procs.append(proc)
    results: list[Result] = []
    for parent, proc in zip(pipes, procs, strict=True):
        try:
            results += parent.recv()
        except EOFError:
            print(f"bench_streams: client process {proc.pid} died", file=sys.stderr)
        proc.join()
    return results


# --- report -----------------------------------------------------------------------------------------


def print_run(r: dict) -> None:
    t, floor = r["ttfb_ms"], r["floor_probe_ms"]
    added50, added99 = t["proxy_p50"] - t["direct_p50"], t["proxy_p99"] - t["direct_p99"]
    print(f"\nN={r['streams']:,} streams of {r['seconds']:.0f} s, opened at {r['rate']:.0f}/s by {r['clients']} "
          f"client processes, {r['chunk_bytes']} B events; max_connections {r['max_connections']}; fd limit {r['fd_limit'][0]}")  # fmt: skip
    print(f"  completed     {r['completed']:,}/{r['streams']:,} ({r['complete_with_every_chunk']:,} with every "
          f"chunk); errors {r['errors'] or 'none'}; direct {r['direct_completed']}/{r['direct_streams']}")  # fmt: skip
    print(f"  RSS           idle {r['idle_rss_mb']:.1f} MB, all open {r['peak_rss_mb']:.1f} MB, after "
          f"{r['after_rss_mb']:.1f} MB → {r['rss_kb_per_stream']:.1f} KB per open stream")  # fmt: skip
    print(f"  fds           idle {r['idle_fds']}, peak {r['peak_fds']:,}")
    for phase, lag in r["lag_probe_ms"].items():
        if lag["samples"]:
            print(f"  loop lag      {phase:<4}: /health round trip p50 {lag['p50']:.2f} ms, p99 {lag['p99']:.2f} ms, "
                  f"max {lag['max']:.1f} ms ({lag['samples']} probes); server CPU "
                  f"{r['server_cpu_cores'].get(phase, 0):.2f} cores")  # fmt: skip
    print(f"                {r['lag_probe_failures']} probes failed; the fake upstream's floor p50 {floor['p50']:.2f} / "
          f"p99 {floor['p99']:.2f} ms")  # fmt: skip
    s = r["server_lag"]
    if s.get("samples"):
        print(f"                server's 1 s timer: p50 ≤ {s['p50_le']} s, p99 ≤ {s['p99_le']} s, max ≤ "
              f"{s['max_le']} s ({s['samples']} ticks); GC collections by generation {r['gc_collections']}")  # fmt: skip
    print(f"  first chunk   proxy p50 {t['proxy_p50']:.2f} / p99 {t['proxy_p99']:.2f} ms; direct p50 "
          f"{t['direct_p50']:.2f} / p99 {t['direct_p99']:.2f} ms → added p50 {added50:.2f} / p99 {added99:.2f} ms")  # fmt: skip
    if not r["events"]:
        print("  events        none: no event log, so no body captured (--no-events)")
    else:
        print(f"  events        {r['events_logged']:,} of {r['streams']:,} proxied streams in the JSONL log, "
              f"{r['events_missing']} missing or not 200")  # fmt: skip
    print(f"  CPU           server {r['server_cpu_s']:.1f} s, fake upstream {r['upstream_cpu_s']:.1f} s; load "
          f"average {r['loadavg_before'][0]:.2f} → {r['loadavg_after'][0]:.2f}; listen queue overflows "
          f"{r['listen_overflows']} (whole machine)")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", default="1000,5000,10000", help="comma list of N (default 1000,5000,10000)")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long each stream lasts (default 60)")
    ap.add_argument(
        "--gap", type=float, default=1.0, help="seconds between the upstream's chunks (default 1)"
    )
    ap.add_argument(
        "--rate", type=float, default=500.0, help="proxied streams opened per second (default 500)"
    )
    ap.add_argument("--chunk-bytes", type=int, default=0,
                    help="pad each content event to about this size (default: ~210 bytes, one word)")  # fmt: skip
    ap.add_argument("--clients", type=int, default=0, help="load processes (default: one per 2,500 streams)")
    ap.add_argument("--max-connections", type=int, default=0, help="the pool's max_connections (default N)")
    ap.add_argument("--no-events", action="store_true",
                    help="no event log (no observer: no body is captured), to see what capture costs per stream")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="50 streams of 2 s: the smoke test's run")
    ap.add_argument("--json", metavar="FILE", help="write every run's figures to FILE")
    ap.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.seconds, args.gap, args.chunk_bytes)
        return 0
    if args.quick:
        args.streams, args.seconds, args.rate = "50", 2.0, 100.0
    soft, hard = raise_fd_limit()  # inherited by the server, the upstream and the clients
    print(
        f"RLIMIT_NOFILE {soft}/{hard}; {os.cpu_count()} CPUs; load average {os.getloadavg()}", file=sys.stderr
    )
    runs = []
    with slow_upstream(args.seconds, args.gap, args.chunk_bytes) as (up_port, up_pid):
        for n in (int(x) for x in args.streams.split(",")):
            print(
                f"N={n}: opening at {args.rate:.0f}/s, holding {args.seconds:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            run = run_streams(n, args, up_port, up_pid)
            runs.append(run)
            print_run(run)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                               "runs": runs}, indent=1))  # fmt: skip
    failed = any(r["completed"] < r["streams"] or r["events_missing"] for r in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
