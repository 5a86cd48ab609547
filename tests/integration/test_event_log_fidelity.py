"""The whole server (build_app, SQLite, in-memory bus, file dispatcher) writes exactly one faithful event
per forwarded request to the JSONL log: deeply nested bodies, a stream past the capture bound, a key
in the query string."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from llmproxy.server.app import build_app
from tests.fakes.upstream import FakeUpstream, json_reply, sse_chunks, sse_reply
from tests.integration.manage.support import AUTH, UPSTREAM_KEY, make_settings

CHAT = "/v1/chat/completions"


async def read_events(path: Path, count: int, timeout_s: float = 15.0) -> list[dict[str, Any]]:
    """The log's events once it holds ``count`` (or the deadline passed)."""
    deadline = time.monotonic() + timeout_s
    lines: list[bytes] = []
    while time.monotonic() < deadline:
        lines = path.read_bytes().splitlines() if path.exists() else []
        if len(lines) >= count:
            break
        await asyncio.sleep(0.05)
    return [json.loads(line) for line in lines]


async def test_every_forwarded_request_is_one_faithful_line_in_the_event_log(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    deep = b'{"model":"gpt-4o","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    usage = {"prompt_tokens": 12, "completion_tokens": 2500, "total_tokens": 2512}
    frames = sse_chunks(*(f"token{i} " for i in range(2500)), usage=False)
    frames.insert(-1, b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
    async with FakeUpstream() as upstream:
        upstream.script(json_reply(), sse_reply(frames), json_reply())
        settings = make_settings(tmp_path, UPSTREAM_BASE_URL=upstream.url, FILE_EVENT_LOG=str(log))
        async with TestClient(TestServer(build_app(settings), host="127.0.0.1")) as client:
            r = await client.post(
                "/manage/projects", json={"name": "p", "api_key": UPSTREAM_KEY}, headers=AUTH
            )
            project = await r.json()
            r = await client.post("/manage/tokens", json={"project_id": project["id"]}, headers=AUTH)
            auth = {
                "Authorization": f"Bearer {(await r.json())['token']}",
                "Content-Type": "application/json",
            }

            statuses = []
            for target, body in [
                (CHAT, deep),
                (CHAT, b'{"model":"gpt-4o-mini","stream":true}'),
                (URL(f"{CHAT}?api-version=1&api_key=sk-proj-abcdefghij0123456789", encoded=True), b"{}"),
            ]:
                async with client.post(target, data=body, headers=auth) as resp:
                    await resp.read()
                    statuses.append(resp.status)
            assert statuses == [200, 200, 200]
            events = await read_events(log, 3)
            await asyncio.sleep(0.2)  # room for a stray extra line to show up
            assert len(log.read_bytes().splitlines()) == 3

    nested, stream, keyed = sorted(events, key=lambda e: e["started_at"])
    assert (nested["status"], nested["request_body"], nested["model"]) == (
        200,
        deep.decode(),
        "gpt-4o-mini-2024-07-18",
    )
    assert (stream["usage"], stream["usage_source"], stream["response_body_truncated"]) == (
        usage,
        "response",
        True,
    )
    assert keyed["query"] == "api-version=1&api_key=[REDACTED]"
    assert upstream.requests[2].query == "api-version=1&api_key=sk-proj-abcdefghij0123456789"
