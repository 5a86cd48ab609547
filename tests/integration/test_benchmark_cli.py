"""`llm-proxy benchmark` (the installed command, as a subprocess) against a running proxy + fake upstream."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmproxy.bench import percentile
from tests.fakes.upstream import FakeUpstream, error_reply, sse_chunks, sse_reply
from tests.integration.test_metrics_endpoints import CHAT, RunningProxy, running_proxy

LLM_PROXY = Path(sys.executable).parent / "llm-proxy"
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


class Run:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code = code
        self.stdout = stdout
        self.stderr = stderr

    def report(self) -> dict[str, Any]:
        return json.loads(self.stdout)  # type: ignore[no-any-return]


async def benchmark(*args: str) -> Run:
    """Run the command without blocking the loop that serves the proxy under test."""
    process = await asyncio.create_subprocess_exec(
        str(LLM_PROXY), "benchmark", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Run(process.returncode, stdout.decode(), stderr.decode())


def target(proxy: RunningProxy, *extra: str) -> list[str]:
    return ["--base-url", proxy.base_url, "--endpoint", CHAT, "--token", proxy.token, *extra]


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture
async def proxy(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[RunningProxy]:
    async with running_proxy(tmp_path, upstream) as running:
        yield running


async def test_fifty_requests_at_concurrency_five_are_all_counted(proxy, upstream):
    run = await benchmark(
        *target(proxy, "--json", BODY, "--requests", "50", "--concurrency", "5", "--output", "json")
    )
    assert run.code == 0, run.stderr
    report = run.report()
    assert (report["requests"], report["concurrency"], report["completed"]) == (50, 5, 50)
    assert report["connection_errors"] == 0
    assert report["status_codes"] == {"200": 50}
    assert report["non_2xx"] == 0
    assert report["method"] == "POST"
    assert report["cache_hits"] == 0 and report["cache_hit_ratio"] == 0.0
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert report["ttft_ms"] is None  # only measured with --stream
    assert report["requests_per_second"] > 0
    assert len(upstream.requests) == 50
    assert all(r.body == BODY.encode().replace(b", ", b",").replace(b": ", b":") for r in upstream.requests)
    metrics = await proxy.metrics()
    assert metrics["requests"]["by_path"] == {CHAT: {"2xx": 50}}


async def test_status_codes_are_counted_and_non_2xx_still_exit_zero(proxy, upstream):
    upstream.script(
        error_reply(429, "rate_limit_exceeded", "slow down"), error_reply(500, "server_error", "oops")
    )
    run = await benchmark(
        *target(proxy, "--json", BODY, "--requests", "6", "--concurrency", "1", "--output", "json")
    )
    assert run.code == 0, run.stderr
    report = run.report()
    assert report["status_codes"] == {"200": 4, "429": 1, "500": 1}
    assert report["non_2xx"] == 2


async def test_a_stream_reports_time_to_first_chunk(proxy, upstream):
    upstream.always(sse_reply(sse_chunks("Hel", "lo")))
    run = await benchmark(
        *target(
            proxy, "--json", BODY, "--stream", "--requests", "8", "--concurrency", "2", "--output", "json"
        )
    )
    assert run.code == 0, run.stderr
    report = run.report()
    assert report["status_codes"] == {"200": 8}
    ttft = report["ttft_ms"]
    assert ttft is not None and 0 < ttft["p50"] <= ttft["max"] <= report["latency_ms"]["max"]
    assert all(json.loads(r.body)["stream"] is True for r in upstream.requests)
    assert all(r.headers["Accept"] == "text/event-stream" for r in upstream.requests)


async def test_cache_flag_asks_for_a_cacheable_answer(proxy, upstream):
    run = await benchmark(
        *target(proxy, "--json", BODY, "--cache", "--requests", "3", "--concurrency", "1", "--output", "json")
    )
    assert run.code == 0, run.stderr
    assert [r.headers["Cache-Control"] for r in upstream.requests] == ["public, max-age=300"] * 3


async def test_without_a_body_the_request_is_a_get(proxy, upstream):
    run = await benchmark(
        "--base-url", proxy.base_url, "--endpoint", "/v1/models", "--token", proxy.token,
        "--requests", "2", "--concurrency", "2", "--output", "json",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert [(r.method, r.path) for r in upstream.requests] == [("GET", "/v1/models")] * 2


async def test_text_report_and_debug_headers_never_show_the_token(proxy, upstream):
    run = await benchmark(*target(proxy, "--json", BODY, "--requests", "4", "--concurrency", "2", "--debug"))
    assert run.code == 0, run.stderr
    assert "Requests/sec" in run.stdout
    assert "Status codes      200: 4" in run.stdout
    assert "Cache hit ratio   0.0% (0/4)" in run.stdout
    assert "> Authorization: [REDACTED]" in run.stderr
    assert "< X-Request-ID: " in run.stderr
    assert proxy.token not in run.stdout + run.stderr


async def test_connection_errors_are_counted_apart_and_exit_one(unused_tcp_port):
    run = await benchmark(
        "--base-url", f"http://127.0.0.1:{unused_tcp_port}", "--token", "sk-whatever-token-value",
        "--requests", "5", "--concurrency", "2", "--output", "json",
    )  # fmt: skip
    assert run.code == 1
    report = run.report()
    assert (report["completed"], report["connection_errors"], report["status_codes"]) == (0, 5, {})
    assert report["error_samples"] and "sk-whatever-token-value" not in run.stdout


@pytest.mark.parametrize(
    "args", [["--json", "{not json"], ["--requests", "0"], ["--base-url", "localhost:1"]]
)
async def test_bad_arguments_exit_two_with_one_line(args):
    run = await benchmark("--token", "t", *args)
    assert run.code == 2
    assert run.stderr.startswith("llm-proxy") and run.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("p", "expected"), [(50, 5.0), (90, 9.0), (99, 10.0), (100, 10.0), (10, 1.0), (1, 1.0)]
)
def test_percentiles_are_nearest_rank(p: float, expected: float) -> None:
    assert percentile([float(v) for v in range(1, 11)], p) == expected


async def test_cache_hit_ratio_comes_from_the_x_proxy_cache_header(tmp_path, upstream):
    async with running_proxy(tmp_path, upstream, HTTP_CACHE_ENABLED="true") as proxy:
        run = await benchmark(
            *target(
                proxy, "--json", BODY, "--cache", "--requests", "4", "--concurrency", "1", "--output", "json"
            )
        )
    assert run.code == 0, run.stderr
    report = run.report()
    assert (report["cache_hits"], report["cache_hit_ratio"]) == (3, 0.75)
    assert len(upstream.requests) == 1


# --- what a first run without flags does, and how a run that got nothing through ends ----------------


async def test_without_a_body_the_chat_endpoint_gets_a_post_with_a_small_chat_body(proxy, upstream):
    run = await benchmark(*target(proxy, "--requests", "2", "--concurrency", "1", "--output", "json"))
    assert run.code == 0, run.stderr
    assert run.report()["method"] == "POST"
    assert [(r.method, r.path) for r in upstream.requests] == [("POST", CHAT)] * 2
    sent = json.loads(upstream.requests[0].body)
    assert sent["model"] and sent["messages"][0]["role"] == "user"
    assert upstream.requests[0].headers["Content-Type"] == "application/json"


async def test_a_run_where_every_request_is_refused_exits_one_with_no_request_rate(tmp_path, upstream):
    async with running_proxy(tmp_path, upstream) as proxy:
        run = await benchmark(
            "--base-url", proxy.base_url, "--token", "sk-not-a-token-of-this-proxy-0000000000",
            "--requests", "5", "--concurrency", "2", "--output", "json",
        )  # fmt: skip
    assert run.code == 1, run.stdout
    report = run.report()
    assert report["status_codes"] == {"401": 5}
    assert (report["succeeded"], report["requests_per_second"]) == (0, 0.0)


async def test_with_the_proxy_down_the_text_report_shows_no_request_rate(unused_tcp_port):
    run = await benchmark(
        "--base-url", f"http://127.0.0.1:{unused_tcp_port}", "--token", "sk-whatever-token-value",
        "--requests", "3", "--concurrency", "1",
    )  # fmt: skip
    assert run.code == 1
    assert "Requests/sec      0.0  (2xx answers only)" in run.stdout
    assert "Completed         0" in run.stdout


async def test_the_request_rate_counts_only_2xx_answers(proxy, upstream):
    upstream.script(error_reply(429, "rate_limit_exceeded", "slow"), error_reply(500, "server_error", "x"))
    run = await benchmark(*target(proxy, "--requests", "6", "--concurrency", "1", "--output", "json"))
    assert run.code == 0, run.stderr
    report = run.report()
    assert (report["completed"], report["succeeded"]) == (6, 4)
    assert report["requests_per_second"] == pytest.approx(4 / report["total_seconds"], rel=0.02)


async def test_duration_runs_for_that_long_instead_of_a_number_of_requests(proxy, upstream):
    run = await benchmark(*target(proxy, "--duration", "0.5", "--concurrency", "2", "--output", "json"))
    assert run.code == 0, run.stderr
    report = run.report()
    assert report["total_seconds"] >= 0.5
    assert report["requests"] == report["completed"] == len(upstream.requests) >= 1


async def test_rate_paces_the_requests(proxy, upstream):
    run = await benchmark(
        *target(proxy, "--rate", "20", "--requests", "6", "--concurrency", "4", "--output", "json")
    )
    assert run.code == 0, run.stderr
    report = run.report()
    assert report["completed"] == 6
    assert report["total_seconds"] >= 5 / 20  # the 6th request may not start before 5/20 s


@pytest.mark.parametrize("args", [["--rate", "0"], ["--duration", "-1"], ["--duration", "soon"]])
async def test_bad_duration_or_rate_exit_two_with_one_line(args):
    run = await benchmark("--token", "t", *args)
    assert run.code == 2
    assert run.stderr.startswith("llm-proxy") and run.stderr.count("\n") == 1
