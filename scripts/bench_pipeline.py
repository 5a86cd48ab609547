#!/usr/bin/env python3
"""Event-pipeline benchmarks: what one event costs the proxy, and how fast one worker drains Redis.

    .venv/bin/python scripts/bench_pipeline.py build     # µs per event: build, encode, publish to Redis
    .venv/bin/python scripts/bench_pipeline.py drain [--events 100000] [--batch-size 100,500] [--repeat 2]

`drain` pre-fills a Redis stream (unique key) with N realistic events through the producer the proxy
uses (RedisStreamBus: batched XADDs in one Lua call), creates the file service's consumer group at
the start of the stream, then starts one `llm-proxy dispatcher --service file` process and times it
until the JSONL file has N lines. It then stops the worker and checks the file holds each event
exactly once and nothing is left pending. Keys are deleted afterwards. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgspec
import redis
from bench import cpu_seconds, interpreter_speed, redis_pid  # scripts/bench.py, beside this script
from redis.asyncio import Redis

from llmproxy import config
from llmproxy.auth.authority import Grant
from llmproxy.config_sections import BusSettings
from llmproxy.events.model import Event, encode_event
from llmproxy.events.redis_streams import RedisStreamBus
from llmproxy.proxy.flow import Flow
from llmproxy.proxy.instrument import build_event
from llmproxy.redis_keys import group_name

SERVICE = "file"


# --- a realistic event -----------------------------------------------------------------------


REQUEST_HEADERS = {
    "Host": "llm-proxy.internal:8080",
    "Authorization": "Bearer sk-0123456789abcdefghijklmnop",
    "Content-Type": "application/json",
    "User-Agent": "OpenAI/Python 1.54.4",
    "Accept": "application/json",
    "X-Stainless-Lang": "python",
    "X-Stainless-Package-Version": "1.54.4",
}
RESPONSE_HEADERS = {
    "Date": "Sat, 23 Nov 2024 09:01:37 GMT",
    "Content-Type": "application/json",
    "openai-organization": "user-abc123",
    "openai-processing-ms": "398",
    "openai-version": "2020-10-01",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "199688",
    "x-request-id": "req_8f2b1d4c3e5a6f7b8c9d0e1f2a3b4c5d",
}


def sample_flow(body_bytes: int) -> Flow:
    """A chat completion as the proxy sees it: a request of about ``body_bytes``, a typical answer."""
    filler = "Summarise the following notes for the weekly report. " * (body_bytes // 54 + 1)
    request = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": filler[: max(0, body_bytes - 160)]},
            ],
            "temperature": 0.2,
        }
    ).encode()
    response = json.dumps(
        {
            "id": "chatcmpl-AbCdEf0123456789",
            "object": "chat.completion",
            "created": 1732352497,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "The week closed three incidents. " * 8},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 312, "completion_tokens": 64, "total_tokens": 376},
            "system_fingerprint": "fp_0ba0d124f1",
        }
    ).encode()
    flow = Flow(
        request_id=uuid.uuid4().hex,
        method="POST",
        path="/v1/chat/completions",
        query="",
        grant=Grant(str(uuid.uuid4()), str(uuid.uuid4()), "sk-upstream", None, None, None),
        request_headers=REQUEST_HEADERS | {"Content-Length": str(len(request))},
        started_at=time.time(),
        arrived=0.0,
    )
    flow.status, flow.duration_ms, flow.ttfb_ms = 200, 412.37, 405.1
    flow.response_headers = RESPONSE_HEADERS | {"Content-Length": str(len(response))}
    flow.request_body, flow.response_body = request, response
    return flow


def sample_events(n: int, body_bytes: int) -> list[Event]:
    event, _ = build_event(sample_flow(body_bytes), config.Settings().events)
    replace = msgspec.structs.replace
    return [replace(event, id=str(uuid.uuid4()), request_id=uuid.uuid4().hex) for _ in range(n)]


def settings_for(key: str, group: str) -> BusSettings:
    return BusSettings.of(
        config.load(
            {
                "LLM_PROXY_EVENT_BUS": "redis-streams",
                "REDIS_STREAM_KEY": key,
                "REDIS_CONSUMER_GROUP": group,
                "REDIS_STREAM_MAX_LEN": "0",
            }  # fmt: skip
        )
    )


def delete_keys(key: str) -> None:
    client = redis.Redis()
    try:
        client.delete(key, f"{key}:dead", f"{key}:dispatcher-stats")
    finally:
        client.close()


# --- build: what the proxy pays per event ------------------------------------------------------


def _per_call_us(fn, rounds: int) -> float:
    fn()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, (time.perf_counter() - t0) / rounds * 1e6)
    return best


async def _publish_cost(events: list[Event], key: str) -> tuple[float, float]:
    """(client CPU µs per event, events/s) publishing through RedisStreamBus until flushed."""
    bus = RedisStreamBus(Redis(), settings_for(key, "unused"), owns_redis=True,
                         spill_max_items=len(events) + 1, spill_max_bytes=1 << 34)  # fmt: skip
    await bus.start()
    try:
        cpu0, t0 = time.process_time(), time.perf_counter()
        for event in events:
            bus.publish(event)
        if not await bus.flush(120):
            raise RuntimeError("events not flushed to Redis in 120s")
        return (time.process_time() - cpu0) / len(events) * 1e6, len(events) / (time.perf_counter() - t0)
    finally:
        await bus.aclose()


def cmd_build(args: argparse.Namespace) -> int:
    flow = sample_flow(args.body_bytes)
    settings = config.Settings().events
    event, _ = build_event(flow, settings)
    encoded = encode_event(event)
    build_us = _per_call_us(lambda: build_event(flow, settings), 2000)
    encode_us = _per_call_us(lambda: encode_event(event), 5000)
    key = f"bench:{uuid.uuid4().hex}:events"
    try:
        publish_us, rate = asyncio.run(_publish_cost(sample_events(args.events, args.body_bytes), key))
    finally:
        delete_keys(key)
    print(f"event: {len(encoded)} bytes encoded (request body {len(flow.request_body)} B, "
          f"response body {len(flow.response_body)} B)")  # fmt: skip
    print(f"build_event   {build_us:7.1f} µs   (redaction, model, usage, RFC 3339 time, uuid4)")
    print(f"encode_event  {encode_us:7.1f} µs")
    print(f"publish+XADD  {publish_us:7.1f} µs CPU per event in the producer, {rate:,.0f} events/s "
          f"into Redis ({args.events} events, batched by the bus)")  # fmt: skip
    return 0


# --- drain: one worker, Redis → JSONL ------------------------------------------------------------


async def _prefill(key: str, group: str, events: list[Event]) -> float:
    client = Redis()
    try:
        bus = RedisStreamBus(client, settings_for(key, group), spill_max_items=len(events) + 1,
                             spill_max_bytes=1 << 34)  # fmt: skip
        await bus.start()
        t0 = time.perf_counter()
        for event in events:
            bus.publish(event)
        if not await bus.flush(300):
            raise RuntimeError("pre-fill did not reach Redis in 300s")
        elapsed = time.perf_counter() - t0
        await bus.aclose()
        await client.xgroup_create(key, group_name(group, SERVICE), id="0")  # read from the start
        return len(events) / elapsed
    finally:
        await client.aclose()


class _LineCounter:
    """Counts lines appended to a file, reading only what is new."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.lines = path, 0, 0

    def poll(self) -> int:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        self.offset += len(data)
        self.lines += data.count(b"\n")
        return self.lines


def drain_once(args: argparse.Namespace, batch_size: int | None, events: list[Event]) -> dict:
    n = len(events)
    key = f"bench:{uuid.uuid4().hex}:events"
    group = f"bench-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="llmproxy-drain-"))
    log = workdir / "events.jsonl"
    worker: subprocess.Popen[bytes] | None = None
    try:
        prefill_rate = asyncio.run(_prefill(key, group, events))
        env = {**os.environ, "LLM_PROXY_EVENT_BUS": "redis-streams", "REDIS_STREAM_KEY": key,
               "REDIS_CONSUMER_GROUP": group, "LOG_LEVEL": "warning"}  # fmt: skip
        cli = shutil.which("llm-proxy", path=str(Path(sys.executable).parent)) or "llm-proxy"
        command = [cli, "dispatcher", "--service", SERVICE, "--endpoint", str(log)]
        if args.profile:
            command = [sys.executable, "-m", "cProfile", "-o", args.profile, "-m", "llmproxy", *command[1:]]
        if batch_size:
            command += ["--batch-size", str(batch_size)]
        counter = _LineCounter(log)
        redis_server = redis_pid()
        t_start = time.perf_counter()
        worker = subprocess.Popen(command, env=env, cwd=workdir)
        spy = None
        if args.py_spy:  # sampling profiler attached to the worker: threads and native frames too
            spy = subprocess.Popen([args.py_spy_bin, "record", "--pid", str(worker.pid), "--threads", "--idle",
                                    "-r", "250", "-f", "raw", "-o", args.py_spy])  # fmt: skip
        deadline = t_start + args.timeout
        t_first = cpu_first = redis_first = None
        first_lines = 0
        while counter.poll() < n:
            if time.perf_counter() > deadline or worker.poll() is not None:
                raise RuntimeError(f"worker drained {counter.lines}/{n} lines before giving up")
            if t_first is None and counter.lines:
                t_first, first_lines = time.perf_counter(), counter.lines
                cpu_first = cpu_seconds(worker.pid)
                redis_first = cpu_seconds(redis_server) if redis_server else None
            time.sleep(0.01)
        t_done = time.perf_counter()
        cpu_done = cpu_seconds(worker.pid)
        redis_done = cpu_seconds(redis_server) if redis_server else None
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        steady = n - first_lines
        result = {
            "events": n,
            "batch_size": batch_size or config.Settings().dispatch.batch_size,
            "bytes_per_line": log.stat().st_size / n,
            "prefill_per_s": prefill_rate,
            "total_per_s": n / (t_done - t_start),  # includes the worker's start (interpreter, imports)
            "steady_per_s": steady / (t_done - t_first) if t_first and t_done > t_first else float("nan"),
            "worker_cpu_us_per_event": (cpu_done - cpu_first) / steady * 1e6 if steady else float("nan"),
            "redis_cpu_us_per_event": (redis_done - redis_first) / steady * 1e6
            if redis_first is not None and redis_done is not None and steady
            else None,
        }
        result |= verify(log, key, group, n)
        return result
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        delete_keys(key)
        shutil.rmtree(workdir, ignore_errors=True)


def verify(log: Path, key: str, group: str, n: int) -> dict:
    ids = [msgspec.json.decode(line)["id"] for line in log.read_bytes().splitlines()]
    client = redis.Redis()
    try:
        pending = client.xpending(key, group_name(group, SERVICE))["pending"]
    finally:
        client.close()
    ok = len(ids) == n and len(set(ids)) == n and pending == 0
    return {"lines": len(ids), "distinct_ids": len(set(ids)), "pending_after": pending, "exactly_once": ok}


def cmd_drain(args: argparse.Namespace) -> int:
    sizes = [int(s) if s != "default" else None for s in args.batch_size.split(",")]
    events = sample_events(args.events, args.body_bytes)
    runs: dict[str, list[dict]] = {str(s or "default"): [] for s in sizes}
    for i in range(args.repeat):
        for size in sizes:
            print(
                f"drain run {i + 1}/{args.repeat}, batch size {size or 'default'}",
                file=sys.stderr,
                flush=True,
            )
            runs[str(size or "default")].append(drain_once(args, size, events))
    print(f"\ndrain of {args.events:,} events (~{runs[next(iter(runs))][0]['bytes_per_line']:.0f} B each) "
          f"by one `llm-proxy dispatcher --service file` process, median of {args.repeat}")  # fmt: skip
    print(f"{'batch':>7} {'steady ev/s':>12} {'incl. start':>12} {'worker µs/ev':>13} {'redis µs/ev':>12} "
          f"{'pre-fill ev/s':>14}  exactly once")  # fmt: skip
    for size, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("steady_per_s", "total_per_s",
               "worker_cpu_us_per_event", "prefill_per_s")}  # fmt: skip
        red = [r["redis_cpu_us_per_event"] for r in rs if r["redis_cpu_us_per_event"] is not None]
        print(f"{size:>7} {med['steady_per_s']:>12,.0f} {med['total_per_s']:>12,.0f} "
              f"{med['worker_cpu_us_per_event']:>13.1f} {statistics.median(red) if red else float('nan'):>12.1f} "
              f"{med['prefill_per_s']:>14,.0f}  {all(r['exactly_once'] for r in rs)} "
              f"(steady runs: {[round(r['steady_per_s']) for r in rs]})")  # fmt: skip
    loop_ns = interpreter_speed()
    print(f"machine reference: {loop_ns:.0f} ns per `s += i` loop iteration (bench.py's; lower is faster)")
    if args.json:
        doc = {"runs": runs, "loop_ns": loop_ns, "loadavg_after": Path("/proc/loadavg").read_text()}
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="µs per event on the proxy side")
    p.add_argument("--events", type=int, default=20_000, help="events published to time the bus")
    p.add_argument("--body-bytes", type=int, default=1500, help="request body size (default 1500)")
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("drain", help="events/s one file worker moves from Redis to the JSONL file")
    p.add_argument("--events", type=int, default=100_000, help="N events pre-filled (default 100000)")
    p.add_argument("--body-bytes", type=int, default=1500, help="request body size (default 1500)")
    p.add_argument("--batch-size", default="default", help="comma list of --batch-size values ('default')")
    p.add_argument("--repeat", type=int, default=2, help="runs per batch size; medians reported")
    p.add_argument("--timeout", type=float, default=300.0, help="give up on one drain after this (s)")
    p.add_argument("--profile", metavar="FILE", help="run the worker under cProfile, stats to FILE")
    p.add_argument("--py-spy", metavar="FILE", help="sample the worker with py-spy, raw stacks to FILE")
    p.add_argument("--py-spy-bin", default=shutil.which("py-spy") or "py-spy", help="the py-spy executable")
    p.add_argument("--json", metavar="FILE", help="write every run to FILE")
    p.set_defaults(func=cmd_drain)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
