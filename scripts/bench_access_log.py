#!/usr/bin/env python3
"""What one ACCESS_LOG line costs: on the event loop, ``AccessLog.record`` (one row of values read from
the request), for a proxied 200 and a refused 401; in the writer thread, formatting, encoding and
writing a batch to /dev/null, divided by its lines. Never part of the test suite.

    .venv/bin/python scripts/bench_access_log.py [--lines 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from llmproxy.auth.grant import Grant
from llmproxy.context import CALLER, ERROR_CODE, REQUEST_ID
from llmproxy.server.access_log import AccessLog


def requests() -> dict[str, tuple[web.Request, web.Response]]:
    ok = make_mocked_request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json"})
    ok[REQUEST_ID] = "5f0c3e0a9d6b4d6f8a3c2b1e0f9d8c7b"
    ok[CALLER] = Grant(
        "tok-id", "0b6f2c1e-3a4d-4e5f-8a9b-0c1d2e3f4a5b", "sk-key", None, None, None, "sk-abcd…wxyz"
    )
    refused = make_mocked_request("GET", "/v1/models?api_key=sk-secret-0123456789&limit=2")
    refused[REQUEST_ID] = "6a1d4f1b0e7c5e7a9b4d3c2f1a0e9d8c"
    refused[ERROR_CODE] = "invalid_token"
    body = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[]}' * 4
    return {
        "proxied 200": (ok, web.Response(body=body, content_type="application/json")),
        "refused 401 (query redacted)": (refused, web.Response(status=401, body=b"{}")),
    }


def per_line_us(access: AccessLog, request: web.Request, response: web.Response, n: int) -> float:
    record, rows = access.record, access._rows  # noqa: SLF001 - emptied between rounds: no drops
    elapsed = 0.0
    for _ in range(n // 1000):
        started = time.perf_counter()
        for _ in range(1000):
            record(request, response, 0.0123)
        elapsed += time.perf_counter() - started
        rows.clear()
    return elapsed / (n // 1000 * 1000) * 1e6


async def writer_us(access: AccessLog, request: web.Request, response: web.Response, n: int) -> float:
    for _ in range(n):
        access.record(request, response, 0.0123)
    started = time.process_time()  # both threads: the loop's hand-over and the thread's writes
    await access.flush()
    return (time.process_time() - started) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    for name, (request, response) in requests().items():
        built, written = [], []
        for _ in range(args.repeat):
            access = AccessLog("/dev/null")
            access.open()
            built.append(per_line_us(access, request, response, args.lines))
            written.append(asyncio.run(writer_us(access, request, response, 10_000)))
            asyncio.run(access.aclose())
        print(
            f"{name:<30} record {statistics.median(built):.2f} µs/line (runs {', '.join(f'{b:.2f}' for b in built)}),"
            f" writer {statistics.median(written):.3f} µs/line"
        )
    sample = AccessLog("-")
    request, response = requests()["refused 401 (query redacted)"]
    sample.record(request, response, 0.0123)
    row = sample._rows[0]  # noqa: SLF001
    print("a line:", sample._encode_lines(sample._entries([row])).decode().strip())  # noqa: SLF001


if __name__ == "__main__":
    main()
