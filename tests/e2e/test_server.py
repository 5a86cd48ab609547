"""The installed `llm-proxy server` as a user runs it: manage CLI, proxying, events on disk, SIGTERM."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.e2e.conftest import MANAGEMENT_TOKEN, poll
from tests.fakes.upstream import CHAT_COMPLETION, SSE_PIECE, Bulk, FakeUpstream, sse_chunks, sse_reply

UPSTREAM_KEY = "sk-upstream-project-key-0123456789abcdef"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


async def test_a_token_from_the_manage_cli_proxies_and_every_request_lands_in_the_event_log(make_server):
    async with FakeUpstream() as upstream:
        server = await make_server(UPSTREAM_BASE_URL=upstream.url)
        project = await server.manage("project", "create", "--name", "e2e", "--api-key", UPSTREAM_KEY)
        assert project["api_key"] != UPSTREAM_KEY and project["api_key"].endswith(UPSTREAM_KEY[-4:])
        created = await server.manage(
            "token", "generate", "--project-id", project["id"], "--duration-minutes", "5"
        )
        token = created["token"]
        assert token.startswith("sk-")

        upstream.script(
            sse_reply(sse_chunks("Hel", "lo")),
        )
        body = json.dumps(CHAT).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as client:
            async with client.post(
                f"{server.url}/v1/chat/completions",
                data=json.dumps({**CHAT, "stream": True}),
                headers=headers,
            ) as r:
                assert r.status == 200
                streamed = await r.read()
            async with client.post(f"{server.url}/v1/chat/completions", data=body, headers=headers) as r:
                assert r.status == 200
                assert await r.json() == CHAT_COMPLETION
                assert r.headers["X-Request-ID"]
                assert r.headers["Server-Timing"].startswith("proxy;dur=")
            async with client.get(
                f"{server.url}/v1/models", headers={"Authorization": "Bearer sk-not-a-real-token-000000"}
            ) as r:
                assert r.status == 401
                assert (await r.json())["error"]["code"] == "invalid_token"

        assert streamed == b"".join(sse_chunks("Hel", "lo"))
        assert [rec.headers["Authorization"] for rec in upstream.requests] == [f"Bearer {UPSTREAM_KEY}"] * 2
        assert upstream.requests[1].body == body

        assert await poll(lambda: len(server.events()) == 2), server.log()
        assert await server.stop() == 0

    events = server.events()
    assert [e["stream"] for e in events] == [True, False]
    assert {e["project_id"] for e in events} == {project["id"]}
    assert {e["token_id"] for e in events} == {created["id"]}
    assert events[1]["usage"] == CHAT_COMPLETION["usage"]
    assert events[1]["request_body"] == body.decode()
    on_disk = server.events_file.read_text() + server.audit_file.read_text() + server.log()
    for secret in (token, UPSTREAM_KEY, MANAGEMENT_TOKEN):
        assert secret not in on_disk
    actions = [json.loads(line)["action"] for line in server.audit_file.read_text().splitlines()]
    assert actions[:2] == ["project.create", "token.create"]


async def test_a_revoked_token_is_refused_at_once(make_server):
    async with FakeUpstream() as upstream:
        server = await make_server(UPSTREAM_BASE_URL=upstream.url)
        project = await server.manage("project", "create", "--name", "p", "--api-key", UPSTREAM_KEY)
        created = await server.manage("token", "generate", "--project-id", project["id"])
        headers = {"Authorization": f"Bearer {created['token']}"}
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{server.url}/v1/models", headers=headers) as r:
                assert r.status == 200
            await server.manage("token", "revoke", created["id"])
            async with client.get(f"{server.url}/v1/models", headers=headers) as r:
                assert r.status == 401
                assert (await r.json())["error"]["code"] == "token_revoked"
        assert len(upstream.requests) == 1
        assert await server.stop() == 0


async def test_a_client_that_stops_reading_is_disconnected_after_the_send_timeout(make_server):
    """On the server as run (uvloop): a client that takes none of a streamed answer for CLIENT_SEND_TIMEOUT
    is disconnected, the upstream connection closed, and the event and the access log say so."""
    async with FakeUpstream() as upstream:
        server = await make_server(UPSTREAM_BASE_URL=upstream.url, CLIENT_SEND_TIMEOUT="500ms")
        project = await server.manage("project", "create", "--name", "e2e", "--api-key", UPSTREAM_KEY)
        token = (await server.manage("token", "generate", "--project-id", project["id"]))["token"]
        upstream.script(Bulk(SSE_PIECE, 4096))  # 256 MiB: it ends only if the client takes it
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        body = json.dumps({**CHAT, "stream": True}).encode()
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nX-Request-ID: stopped-reading\r\nContent-Length: %d\r\n\r\n%s"
            % (token.encode(), len(body), body)
        )
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200")
        # ...and takes nothing more (asyncio's reader stops reading at 128 KiB)
        assert await poll(lambda: upstream.dropped == 1, timeout=15), server.log()
        writer.close()
        assert await poll(lambda: any(e["request_id"] == "stopped-reading" for e in server.events()))
        async with aiohttp.ClientSession() as client, client.get(f"{server.url}/metrics") as r:
            assert (await r.json())["bad_requests"]["send_timeout"] == 1
    [event] = [e for e in server.events() if e["request_id"] == "stopped-reading"]
    assert (event["status"], event["error"]) == (200, "client_disconnected")
    lines = [json.loads(line) for line in server.stderr().splitlines() if '"stopped-reading"' in line]
    assert [(line["status"], line["error"]) for line in lines] == [(499, "send_timeout")]
