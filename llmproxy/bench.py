"""`llm-proxy benchmark`: N requests (or D seconds) at concurrency C against a running proxy, then what it saw.

One aiohttp session whose connection pool is as large as the concurrency; C workers take request
numbers from a shared counter, each started no earlier than its slot when ``--rate`` paces them. Without
``--json`` a chat-completions endpoint gets a small chat body (POST), any other endpoint a GET. Reports
requests/s of 2xx answers only, latency and (for streams) time to the first body chunk, status codes, the
cache hit ratio (``X-PROXY-CACHE: hit``) and connection errors. The token is sent, never printed. Exit 0
when a request succeeded (2xx) and every request got an HTTP answer; 1 when none succeeded or any failed
to connect or timed out; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import IO, Any

import aiohttp
import msgspec

from llmproxy.loop import run_loop

__all__ = ("BenchResult", "add_arguments", "percentile", "run")

EXIT_CONNECTION_ERRORS = 1  # also: no request got a 2xx answer
EXIT_USAGE = 2
_REDRAW_S = 0.1  # the progress bar is redrawn at most 10 times a second
_BAR_WIDTH = 30
_SAMPLE_ERRORS = 5  # distinct connection error messages kept for the report
DEFAULT_REQUESTS = 100
# What a run without --json sends to a chat-completions endpoint: the smallest real request.
DEFAULT_CHAT_BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello"}],
    "max_tokens": 16,
}
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default="http://localhost:8080", help="the proxy (default %(default)s)")
    parser.add_argument(
        "--endpoint", default="/v1/chat/completions", help="path to call (default %(default)s)"
    )
    parser.add_argument("--token", required=True, help="the withering token sent as Bearer")
    parser.add_argument(
        "--requests",
        "-n",
        type=_positive,
        help=f"how many requests (default {DEFAULT_REQUESTS}, none with --duration)",
    )
    parser.add_argument(
        "--duration", type=_seconds, help="run this long (seconds), then wait for the requests in flight"
    )
    parser.add_argument("--rate", type=_rate, help="start at most this many requests per second")
    parser.add_argument(
        "--concurrency", "-c", type=_positive, default=10, help="requests in flight (default 10)"
    )
    parser.add_argument(
        "--json",
        metavar="BODY",
        help="JSON request body, or @FILE to read it (implies POST); default: a small chat body for a "
        "…/chat/completions endpoint, no body (GET) for any other",
    )
    parser.add_argument("--method", help="HTTP method (default POST with a body, else GET)")
    parser.add_argument(
        "--stream", action="store_true", help='ask for SSE ("stream": true) and time the first chunk'
    )
    parser.add_argument("--cache", action="store_true", help="send Cache-Control: public, max-age=TTL")
    parser.add_argument(
        "--cache-ttl", type=_positive, default=300, help="max-age sent with --cache (default 300)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument("--debug", action="store_true", help="print the first request and response headers")
    parser.add_argument("--output", choices=("text", "json"), default="text", help="report format")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        return _seconds(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive number of requests per second, got {text!r}"
        ) from None


class Latencies(msgspec.Struct):
    p50: float
    p90: float
    p99: float
    max: float
    mean: float


class BenchResult(msgspec.Struct, kw_only=True):
    """The report, as ``--output json`` prints it (milliseconds, seconds, counts)."""

    url: str
    method: str
    requests: int
    concurrency: int
    completed: int  # got an HTTP answer, any status
    succeeded: int  # got a 2xx answer
    connection_errors: int  # refused, reset, timed out: no answer
    total_seconds: float
    requests_per_second: float  # 2xx answers per second: refusals and errors are no throughput
    latency_ms: Latencies | None
    ttft_ms: Latencies | None  # time to the first body chunk (with --stream)
    status_codes: dict[str, int]
    non_2xx: int
    cache_hits: int
    cache_hit_ratio: float
    error_samples: list[str] = []


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (p in 0…100)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _latencies(values: list[float]) -> Latencies | None:
    if not values:
        return None
    values.sort()
    return Latencies(
        p50=round(percentile(values, 50), 3),
        p90=round(percentile(values, 90), 3),
        p99=round(percentile(values, 99), 3),
        max=round(values[-1], 3),
        mean=round(sum(values) / len(values), 3),
    )


class _Progress:
    """``[#####.....] 45% 450/1000`` on a terminal, redrawn at most 10 times a second; silent elsewhere."""

    def __init__(self, total: int | None, duration: float | None, out: IO[str]) -> None:
        self._total = total
        self._duration = duration
        self._out = out
        self._enabled = out.isatty()
        self._drawn_at = 0.0

    def update(self, done: int, elapsed: float) -> None:
        if not self._enabled:
            return
        fraction = max(
            done / self._total if self._total else 0.0, elapsed / self._duration if self._duration else 0.0
        )
        fraction = min(fraction, 1.0)
        now = time.monotonic()
        if fraction < 1.0 and now - self._drawn_at < _REDRAW_S:
            return
        self._drawn_at = now
        filled = int(_BAR_WIDTH * fraction)
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        of = f"/{self._total}" if self._total else f" in {elapsed:.1f}s"
        self._out.write(f"\r[{bar}] {int(100 * fraction):3d}% {done}{of}")
        self._out.flush()

    def finish(self) -> None:
        if self._enabled:
            self._out.write("\n")
            self._out.flush()


class _Load:
    """The state the workers share: next request number, what came back."""

    def __init__(self, args: argparse.Namespace, body: bytes | None, headers: dict[str, str]) -> None:
        self.url = args.base_url.rstrip("/") + "/" + args.endpoint.lstrip("/")
        self.method = (args.method or ("POST" if body is not None else "GET")).upper()
        self.body = body
        self.headers = headers
        self.duration: float | None = args.duration
        self.total: int | None = args.requests or (None if self.duration else DEFAULT_REQUESTS)
        self.interval = 1.0 / args.rate if args.rate else 0.0
        self.started = 0.0
        self.deadline = float("inf")
        self.stream = args.stream
        self.debug = args.debug
        self.next = 0
        self.done = 0
        self.latencies: list[float] = []
        self.ttfts: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.cache_hits = 0
        self.connection_errors = 0
        self.error_samples: list[str] = []

    def start(self) -> None:
        self.started = time.perf_counter()
        if self.duration is not None:
            self.deadline = self.started + self.duration

    async def _take(self) -> int | None:
        """The next request's number (1-based) once its --rate slot has come; None when the run is over."""
        if (self.total is not None and self.next >= self.total) or time.perf_counter() >= self.deadline:
            return None
        self.next += 1
        number = self.next
        if self.interval:
            wait = self.started + (number - 1) * self.interval - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            if time.perf_counter() >= self.deadline:
                return None
        return number

    async def worker(self, session: aiohttp.ClientSession, progress: _Progress) -> None:
        while (number := await self._take()) is not None:
            first = number == 1
            started = time.perf_counter()
            try:
                async with session.request(
                    self.method, self.url, data=self.body, headers=self.headers
                ) as resp:
                    ttft = None
                    async for _ in resp.content.iter_any():
                        if ttft is None:
                            ttft = time.perf_counter() - started
                    elapsed = time.perf_counter() - started
                    if first and self.debug:
                        _print_debug(self, resp)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.connection_errors += 1
                message = f"{type(exc).__name__}: {exc}"[:200]
                if len(self.error_samples) < _SAMPLE_ERRORS and message not in self.error_samples:
                    self.error_samples.append(message)
            else:
                self.statuses[resp.status] += 1
                self.latencies.append(elapsed * 1000.0)
                if self.stream and ttft is not None:
                    self.ttfts.append(ttft * 1000.0)
                if resp.headers.get("X-PROXY-CACHE", "").lower() == "hit":
                    self.cache_hits += 1
            self.done += 1
            progress.update(self.done, time.perf_counter() - self.started)


def _redacted(headers: Mapping[str, str]) -> list[str]:
    return [f"{k}: {'[REDACTED]' if k.lower() in _SECRET_HEADERS else v}" for k, v in headers.items()]


def _print_debug(load: _Load, resp: aiohttp.ClientResponse) -> None:
    lines = [f"> {load.method} {load.url}", *(f"> {h}" for h in _redacted(load.headers))]
    lines += [f"< {resp.status} {resp.reason or ''}".rstrip(), *(f"< {h}" for h in _redacted(resp.headers))]
    sys.stderr.write("\n".join(lines) + "\n")


def _request_body(args: argparse.Namespace) -> bytes | None:
    """The --json body (validated), or the default chat body; "stream": true added for --stream.
    Raises ValueError."""
    if args.json is None:
        chat = args.endpoint.split("?")[0].rstrip("/").endswith("/chat/completions")
        if not chat or (args.method or "POST").upper() != "POST":
            return None
        document: Any = dict(DEFAULT_CHAT_BODY)
    else:
        text = args.json
        if text.startswith("@"):
            with open(text[1:], encoding="utf-8") as f:
                text = f.read()
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--json is not valid JSON: {exc}") from None
    if args.stream and isinstance(document, dict):
        document.setdefault("stream", True)
    return json.dumps(document, separators=(",", ":")).encode()


def _request_headers(args: argparse.Namespace, body: bytes | None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {args.token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if args.stream:
        headers["Accept"] = "text/event-stream"
    if args.cache:
        headers["Cache-Control"] = f"public, max-age={args.cache_ttl}"
    return headers


async def _run(args: argparse.Namespace, body: bytes | None) -> BenchResult:
    load = _Load(args, body, _request_headers(args, body))
    progress = _Progress(load.total, load.duration, sys.stderr)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    load.start()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True) as session:
        workers = min(args.concurrency, load.total or args.concurrency)
        await asyncio.gather(*(load.worker(session, progress) for _ in range(workers)))
    progress.finish()
    total_s = time.perf_counter() - load.started
    completed = sum(load.statuses.values())
    succeeded = sum(n for code, n in load.statuses.items() if 200 <= code < 300)
    return BenchResult(
        url=load.url,
        method=load.method,
        requests=load.done,
        concurrency=args.concurrency,
        completed=completed,
        succeeded=succeeded,
        connection_errors=load.connection_errors,
        total_seconds=round(total_s, 4),
        requests_per_second=round(succeeded / total_s, 2) if total_s > 0 else 0.0,
        latency_ms=_latencies(load.latencies),
        ttft_ms=_latencies(load.ttfts),
        status_codes={str(code): n for code, n in sorted(load.statuses.items())},
        non_2xx=completed - succeeded,
        cache_hits=load.cache_hits,
        cache_hit_ratio=round(load.cache_hits / completed, 4) if completed else 0.0,
        error_samples=load.error_samples,
    )


def format_report(r: BenchResult) -> str:
    def row(name: str, value: Any) -> str:
        return f"{name:<18}{value}"

    def dist(d: Latencies) -> str:
        return f"p50 {d.p50:.2f}  p90 {d.p90:.2f}  p99 {d.p99:.2f}  max {d.max:.2f}  mean {d.mean:.2f}"

    lines = [
        row("Target", f"{r.method} {r.url}"),
        row("Requests", f"{r.requests} at concurrency {r.concurrency}"),
        row("Total time", f"{r.total_seconds:.3f} s"),
        row("Requests/sec", f"{r.requests_per_second:.1f}  (2xx answers only)"),
        row(
            "Completed",
            f"{r.completed}  (2xx {r.succeeded}, non-2xx {r.non_2xx}, connection errors {r.connection_errors})",
        ),
    ]
    if r.latency_ms is not None:
        lines.append(row("Latency (ms)", dist(r.latency_ms)))
    if r.ttft_ms is not None:
        lines.append(row("TTFT (ms)", dist(r.ttft_ms)))
    codes = "  ".join(f"{code}: {n}" for code, n in r.status_codes.items()) or "-"
    lines.append(row("Status codes", codes))
    lines.append(row("Cache hit ratio", f"{100 * r.cache_hit_ratio:.1f}% ({r.cache_hits}/{r.completed})"))
    lines += [row("Error" if i == 0 else "", sample) for i, sample in enumerate(r.error_samples)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the load and print the report on stdout; exit code as the module docstring says."""
    try:
        body = _request_body(args)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"llm-proxy: {exc}\n")
        return EXIT_USAGE
    if not args.base_url.startswith(("http://", "https://")):
        sys.stderr.write(
            f"llm-proxy: --base-url must start with http:// or https://, got {args.base_url!r}\n"
        )
        return EXIT_USAGE
    result = run_loop(_run(args, body))
    if args.output == "json":
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        sys.stdout.write(format_report(result) + "\n")
    if result.connection_errors or not result.succeeded:
        return EXIT_CONNECTION_ERRORS
    return 0
