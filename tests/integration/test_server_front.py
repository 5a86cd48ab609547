"""What a user sees of the server itself: the answer at ``/`` and the ``Server`` header on every answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.upstream import FakeUpstream, json_reply
from tests.integration.manage.support import MANAGEMENT_TOKEN
from tests.integration.test_metrics_endpoints import CHAT, CHAT_BODY, running_proxy

# aiohttp writes its default Server header from aiohttp.web_response.SERVER_SOFTWARE: when that stops
# being true (an aiohttp upgrade), these tests fail with this hint (see llmproxy/server/app.py).
HINT = "aiohttp no longer takes its Server header from web_response.SERVER_SOFTWARE"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


async def test_root_points_to_the_admin_ui_and_the_api_docs_without_authentication(tmp_path, upstream):
    async with running_proxy(tmp_path, upstream) as proxy:
        async with proxy.client.get("/", allow_redirects=False) as r:
            status, text = r.status, await r.text()
            content_type = r.content_type
    assert status == 200, text
    assert content_type == "application/json"
    document = json.loads(text)
    assert document["admin"] == "/admin/"
    assert document["openapi"] == "/manage/openapi.json"
    assert document["health"] == "/health"
    assert "README" in document["docs"]
    assert MANAGEMENT_TOKEN not in text and proxy.token not in text


async def test_root_is_not_counted_as_proxy_traffic(tmp_path, upstream):
    async with running_proxy(tmp_path, upstream) as proxy:
        async with proxy.client.get("/") as r:
            assert r.status == 200
        metrics = await proxy.metrics()
    assert metrics["requests"]["total"] == 0


@pytest.mark.parametrize("path", ["/", "/health", "/admin/login", "/manage/projects", "/v1/not-allowed"])
async def test_the_servers_own_answers_say_server_llmproxy_without_versions(tmp_path, upstream, path):
    async with running_proxy(tmp_path, upstream) as proxy:
        async with proxy.client.get(path) as r:
            await r.read()
            server = r.headers.getall("Server")
    assert server == ["llmproxy"], HINT


async def test_a_proxied_answer_keeps_the_upstreams_own_server_header(tmp_path, upstream):
    upstream.script(json_reply(headers={"Server": "cloudflare"}))
    async with running_proxy(tmp_path, upstream) as proxy:
        async with proxy.client.post(CHAT, json=CHAT_BODY, headers=proxy.auth()) as r:
            assert r.status == 200
            server = r.headers.getall("Server")
    assert server == ["cloudflare"]


async def _bare_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream that answers every request with a chat completion and no Server header."""
    body = json.dumps({"object": "chat.completion", "choices": []}).encode()
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def test_a_proxied_answer_without_a_server_header_gets_ours(tmp_path: Path):
    bare = await asyncio.start_server(_bare_upstream, "127.0.0.1", 0)
    port = bare.sockets[0].getsockname()[1]
    fake = FakeUpstream()
    fake.url = f"http://127.0.0.1:{port}"
    try:
        async with running_proxy(tmp_path, fake) as proxy:
            async with proxy.client.post(CHAT, json=CHAT_BODY, headers=proxy.auth()) as r:
                assert r.status == 200
                server = r.headers.getall("Server")
    finally:
        bare.close()
        await bare.wait_closed()
    assert server == ["llmproxy"], HINT
