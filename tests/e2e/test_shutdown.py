"""SIGTERM drains: a slow request and a stream in flight both complete, new connections are refused."""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp

from tests.e2e.conftest import poll
from tests.fakes.upstream import FakeUpstream, hang, sse_chunks, sse_reply

UPSTREAM_KEY = "sk-upstream-project-key-0123456789abcdef"


async def test_sigterm_lets_a_slow_request_and_a_stream_finish_then_exits_0(make_server):
    release_slow, release_rest = asyncio.Event(), asyncio.Event()
    frames = sse_chunks("one", "two", "three")
    async with FakeUpstream() as upstream:
        server = await make_server(UPSTREAM_BASE_URL=upstream.url, SHUTDOWN_TIMEOUT="20s")
        project = await server.manage("project", "create", "--name", "drain", "--api-key", UPSTREAM_KEY)
        token = (await server.manage("token", "generate", "--project-id", project["id"]))["token"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        upstream.script(hang(release_slow), sse_reply(frames, gates=[None, release_rest]))
        body = json.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        )

        async with aiohttp.ClientSession() as client:
            slow = asyncio.ensure_future(_post(client, f"{server.url}/v1/chat/completions", headers))
            assert await _poll_async(lambda: len(upstream.requests) == 1)
            async with client.post(f"{server.url}/v1/chat/completions", data=body, headers=headers) as stream:
                assert stream.status == 200
                first = await stream.content.readuntil(b"\n\n")  # the stream has started
                server.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)  # the server is draining now
                try:
                    async with aiohttp.ClientSession() as fresh:
                        async with fresh.get(f"{server.url}/health"):
                            refused = False
                except aiohttp.ClientConnectionError:
                    refused = True
                release_rest.set()
                release_slow.set()
                rest = await stream.read()
            status, slow_body = await slow

        assert refused, "a new connection was accepted after SIGTERM"
        assert first + rest == b"".join(frames)
        assert (status, slow_body) == (200, b"{}")
        assert await server.stop() == 0


async def _post(client: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    async with client.post(url, data=b'{"model":"gpt-4o-mini","messages":[]}', headers=headers) as r:
        return r.status, await r.read()


async def _poll_async(condition) -> bool:
    return await poll(condition, timeout=10)
