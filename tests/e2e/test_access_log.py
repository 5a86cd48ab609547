"""ACCESS_LOG as an operator meets it: one JSON line per request, refusals included, never a secret.

The installed `llm-proxy server` runs as a subprocess; refusals (unknown, expired token, used-up quota,
rate limit) are sent over HTTP on loopback and read back from the file, from stderr, after logrotate's
rename + SIGHUP, and not at all with ``off``. Each refusal is also counted by code in /metrics. A stderr
nobody reads never keeps the server from answering or from stopping.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.conftest import MANAGEMENT_TOKEN, ServerProcess, poll
from tests.fakes.upstream import FakeUpstream, sse_chunks, sse_reply

UPSTREAM_KEY = "sk-upstream-project-key-0123456789abcdef"
UNKNOWN = "sk-unknown-token-aaaabbbbccccddddeeee"
RFC3339_US = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
FIELDS = {
    "time", "request_id", "method", "path", "status", "error", "duration_ms", "project_id",
    "token", "bytes_in", "bytes_out", "cache",
}  # fmt: skip


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def by_id(entries: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [e for e in entries if e["request_id"] == request_id]


def hint(raw: str) -> str:
    return f"sk-{raw[3:7]}…{raw[-4:]}"


async def get(client: aiohttp.ClientSession, url: str, token: str, request_id: str) -> int:
    headers = {"Authorization": f"Bearer {token}", "X-Request-ID": request_id}
    async with client.get(
        url + "/v1/models?api_key=sk-query-secret-0123456789&limit=2", headers=headers
    ) as r:
        await r.read()
        return r.status


async def tokens(server: Any) -> dict[str, dict[str, Any]]:
    project = await server.manage("project", "create", "--name", "p", "--api-key", UPSTREAM_KEY)
    made = {}
    for name, limits in (
        ("quota", ("--max-requests", "1")),
        ("rate", ("--rate-limit-per-minute", "1")),
        ("expired", ()),
    ):
        made[name] = await server.manage("token", "generate", "--project-id", project["id"], *limits)
    await server.manage("token", "update", made["expired"]["id"], "--expires-at", "2020-01-01T00:00:00Z")
    made["project"] = project
    return made


async def test_every_refusal_leaves_exactly_one_access_line_without_a_secret(make_server, tmp_path) -> None:
    access = tmp_path / "access.jsonl"
    async with FakeUpstream() as upstream:
        server = await make_server(UPSTREAM_BASE_URL=upstream.url, ACCESS_LOG=str(access))
        made = await tokens(server)
        project_id = made["project"]["id"]
        async with aiohttp.ClientSession() as client:
            sent = {
                "unknown": await get(client, server.url, UNKNOWN, "req-unknown"),
                "quota-1": await get(client, server.url, made["quota"]["token"], "req-quota-1"),
                "quota-2": await get(client, server.url, made["quota"]["token"], "req-quota-2"),
                "rate-1": await get(client, server.url, made["rate"]["token"], "req-rate-1"),
                "rate-2": await get(client, server.url, made["rate"]["token"], "req-rate-2"),
                "expired": await get(client, server.url, made["expired"]["token"], "req-expired"),
            }
            async with client.get(server.url + "/health", headers={"X-Request-ID": "req-health"}) as r:
                assert r.status == 200
            async with client.get(server.url + "/metrics/prometheus") as r:
                prometheus = await r.text()
            async with client.get(server.url + "/metrics") as r:
                metrics = await r.json()
        assert sent == {
            "unknown": 401,
            "quota-1": 200,
            "quota-2": 429,
            "rate-1": 200,
            "rate-2": 429,
            "expired": 401,
        }
        assert await poll(lambda: len(by_id(lines(access), "req-health")) == 1), server.log()
        assert await server.stop() == 0

    entries = lines(access)
    expected = {
        "req-unknown": (401, "invalid_token", None, hint(UNKNOWN)),
        "req-quota-1": (200, None, project_id, hint(made["quota"]["token"])),
        "req-quota-2": (429, "quota_exceeded", project_id, hint(made["quota"]["token"])),
        "req-rate-1": (200, None, project_id, hint(made["rate"]["token"])),
        "req-rate-2": (429, "rate_limited", project_id, hint(made["rate"]["token"])),
        "req-expired": (401, "token_expired", project_id, hint(made["expired"]["token"])),
        "req-health": (200, None, None, None),
    }
    for request_id, (status, error, project, token) in expected.items():
        [entry] = by_id(entries, request_id)
        assert set(entry) == FIELDS
        assert (entry["status"], entry["error"], entry["project_id"], entry["token"]) == (
            status, error, project, token,
        ), entry  # fmt: skip
        assert RFC3339_US.match(entry["time"]), entry
        assert entry["method"] == "GET" and entry["duration_ms"] >= 0 and entry["bytes_in"] == 0
        assert entry["bytes_out"] > 0 and entry["cache"] is None
    [refused] = by_id(entries, "req-unknown")
    assert refused["path"] == "/v1/models?api_key=[REDACTED]&limit=2"
    assert any(e["path"].startswith("/manage/") for e in entries)  # the manage CLI's own calls too

    text = access.read_text() + server.log()
    secrets = [UNKNOWN, UPSTREAM_KEY, MANAGEMENT_TOKEN, "sk-query-secret-0123456789"]
    secrets += [made[name]["token"] for name in ("quota", "rate", "expired")]
    for secret in secrets:
        assert secret not in text

    for code, count in (
        ("invalid_token", 1),
        ("quota_exceeded", 1),
        ("rate_limited", 1),
        ("token_expired", 1),
    ):
        assert f'llm_proxy_refusals_total{{code="{code}"}} {count}.0' in prometheus
        assert metrics["refusals"][code] == count


async def test_the_default_access_log_is_stderr(make_server) -> None:
    async with FakeUpstream() as upstream:
        server = await make_server(UPSTREAM_BASE_URL=upstream.url)  # ACCESS_LOG unset: "-"
        async with aiohttp.ClientSession() as client:
            assert await get(client, server.url, UNKNOWN, "req-stderr") == 401
        assert await server.stop() == 0
    stderr = server.stderr()
    entries = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    [entry] = by_id(entries, "req-stderr")
    assert (entry["status"], entry["error"], entry["token"]) == (401, "invalid_token", hint(UNKNOWN))
    assert UNKNOWN not in stderr


async def test_sighup_reopens_the_access_log_after_logrotate_renamed_it(make_server, tmp_path) -> None:
    access = tmp_path / "access.jsonl"
    rotated = tmp_path / "access.jsonl.1"
    async with FakeUpstream() as upstream:
        server = await make_server(UPSTREAM_BASE_URL=upstream.url, ACCESS_LOG=str(access))
        async with aiohttp.ClientSession() as client:
            assert await get(client, server.url, UNKNOWN, "req-before") == 401
            assert await poll(lambda: len(by_id(lines(access), "req-before")) == 1), server.log()
            access.rename(rotated)
            assert server.process is not None
            server.process.send_signal(signal.SIGHUP)
            assert await poll(access.exists), server.log()
            assert await get(client, server.url, UNKNOWN, "req-after") == 401
            assert await poll(lambda: len(by_id(lines(access), "req-after")) == 1), server.log()
        assert await server.stop() == 0
    ours = [
        [e["request_id"] for e in lines(f) if e["request_id"].startswith("req-")] for f in (rotated, access)
    ]
    assert ours == [["req-before"], ["req-after"]]  # (the start's /health polls are lines too)
    assert oct(access.stat().st_mode & 0o777) == oct(0o640)


async def test_access_log_off_writes_nothing(make_server, tmp_path) -> None:
    async with FakeUpstream() as upstream:
        server = await make_server(UPSTREAM_BASE_URL=upstream.url, ACCESS_LOG="off")
        async with aiohttp.ClientSession() as client:
            assert await get(client, server.url, UNKNOWN, "req-off") == 401
            async with client.get(server.url + "/metrics") as r:
                assert (await r.json())["refusals"]["invalid_token"] == 1  # still counted
        assert await server.stop() == 0
    stderr = server.stderr()
    assert "req-off" not in stderr and "req-off" not in server.log()
    assert not list(tmp_path.glob("*access*"))


def blocked_on_a_pipe(pid: int) -> bool:
    """A thread of ``pid`` sleeps in the kernel's pipe write (wchan ``pipe_write``, ``anon_pipe_write``)."""
    return any("pipe_write" in (task / "wchan").read_text() for task in Path(f"/proc/{pid}/task").iterdir())


async def test_sigterm_stops_a_server_whose_stderr_nobody_reads(tmp_path) -> None:
    """ACCESS_LOG=- into a pipe never read: once the pipe is full the writer blocks for good; requests are
    still answered, and SIGTERM still stops the server, the lines it could not write counted in its log."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # a page: ~20 lines fill it
    async with FakeUpstream() as upstream:
        server = ServerProcess(tmp_path, {"UPSTREAM_BASE_URL": upstream.url}, stderr=write_end)
        try:
            await server.start()
            os.close(write_end)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:

                async def answered() -> list[int]:
                    statuses = []
                    for _ in range(10):
                        async with client.get(server.url + "/health") as r:
                            statuses.append(r.status)
                    return statuses

                pid = server.process.pid if server.process is not None else 0
                for _ in range(100):  # each round's lines are written within 0.25 s
                    assert await answered() == [200] * 10
                    if await poll(lambda: blocked_on_a_pipe(pid), timeout=0.5):
                        break
                assert blocked_on_a_pipe(pid)  # the pipe is full: the access log's writer is stuck for good
                assert await answered() == [200] * 10  # the loop does not wait for the writer
            assert await server.stop() == 0
        finally:
            os.close(read_end)  # a writer still blocked gets EPIPE
            await server.kill_if_running()
    assert "access log: - still not writable after 5s at shutdown" in server.log()


async def test_bytes_out_of_a_streamed_answer_is_every_byte_the_client_received(
    make_server, tmp_path
) -> None:
    """An SSE answer is written from the upstream connection's callback, chunk by chunk (proxy/relay.py):
    the access line still counts every byte on the wire, status line, headers and chunk framing included."""
    access = tmp_path / "access.jsonl"
    async with FakeUpstream() as upstream:
        rest = asyncio.Event()  # the upstream sends the first event, then the others once this is set
        upstream.always(sse_reply(sse_chunks("Hel", "lo", " there"), gates=[None, rest]))
        server = await make_server(UPSTREAM_BASE_URL=upstream.url, ACCESS_LOG=str(access))
        project = await server.manage("project", "create", "--name", "p", "--api-key", UPSTREAM_KEY)
        token = (await server.manage("token", "generate", "--project-id", project["id"]))["token"]
        body = b'{"model": "gpt-4o-mini", "stream": true, "messages": []}'
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n"
            f"Authorization: Bearer {token}\r\nX-Request-ID: req-stream\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        host, port = server.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head.encode() + body)
        received = await asyncio.wait_for(reader.readuntil(b"\n\n"), timeout=10)  # the first event
        rest.set()  # so the others come while the relay waits for them
        received += await asyncio.wait_for(reader.read(), timeout=10)  # to the close
        writer.close()
        assert received.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding: chunked" in received
        assert received.endswith(b"\r\n0\r\n\r\n") and b"data: [DONE]" in received
        assert await poll(lambda: len(by_id(lines(access), "req-stream")) == 1), server.log()
        assert await server.stop() == 0
    [entry] = by_id(lines(access), "req-stream")
    assert entry["status"] == 200 and entry["bytes_out"] == len(received)
