"""The whole app (build_app) against bad input and a PostgreSQL that goes away mid-run.

PostgreSQL is the real server, reached through a loopback TCP forwarder the test can cut and restore
(the shared server itself must stay up for everyone else).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from llmproxy.server.app import build_app
from llmproxy.store.postgres import PostgresStore
from tests.fakes.upstream import FakeUpstream
from tests.integration.manage.support import AUTH, UPSTREAM_KEY, make_settings

PG = ("127.0.0.1", 5432)
CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


class Forwarder:
    """A TCP forwarder to PostgreSQL on a fixed loopback port: ``cut()`` is an outage, ``restore()`` ends it."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*PG)
        self._writers |= {writer, up_writer}

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        self._writers -= {writer, up_writer}


@pytest.fixture
async def pg_app(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Forwarder, FakeUpstream, dict[str, Any]]]:
    schema = f"test_outage_{uuid.uuid4().hex[:12]}"
    forwarder = Forwarder()
    await forwarder.restore()
    dsn = f"postgresql://postgres@127.0.0.1:{forwarder.port}/test"
    async with FakeUpstream() as upstream:
        settings = make_settings(tmp_path, UPSTREAM_BASE_URL=upstream.url, DATABASE_URL=dsn)
        store = PostgresStore(dsn, None, schema=schema, connect_timeout=2.0, command_timeout=5.0)
        try:
            async with TestClient(TestServer(build_app(settings, store=store), host="127.0.0.1")) as client:
                r = await client.post(
                    "/manage/projects", json={"name": "pg", "api_key": UPSTREAM_KEY}, headers=AUTH
                )
                project = await r.json()
                # a quota makes every proxied request count in the database
                r = await client.post(
                    "/manage/tokens", json={"project_id": project["id"], "max_requests": 1000}, headers=AUTH
                )
                token = await r.json()
                yield client, forwarder, upstream, {"project": project, "token": token, "dir": tmp_path}
        finally:
            with contextlib.suppress(Exception):
                await forwarder.cut()
            conn = await asyncpg.connect(host=PG[0], port=PG[1], user="postgres", database="test")
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()


async def _chat(client: TestClient, token: str) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with client.post("/v1/chat/completions", data=CHAT, headers=headers) as r:
        return r.status, await r.json()


async def test_a_postgresql_outage_answers_503_is_audited_and_recovers_by_itself(pg_app) -> None:
    client, forwarder, upstream, ctx = pg_app
    token = ctx["token"]["token"]
    assert (await _chat(client, token))[0] == 200

    await forwarder.cut()
    status, body = await _chat(client, token)
    assert (status, body["error"]["code"]) == (503, "service_unavailable")
    r = await client.get("/manage/projects", headers=AUTH)
    assert r.status == 503 and (await r.json())["error"]["code"] == "service_unavailable"
    r = await client.get("/ready")
    assert r.status == 503 and (await r.json())["checks"]["store"].startswith("unavailable")
    assert len(upstream.requests) == 1  # nothing was forwarded uncounted

    await forwarder.restore()
    statuses = []
    for _ in range(50):  # the pool reconnects by itself; at most the first call finds a dead connection
        status, _ = await _chat(client, token)
        statuses.append(status)
        if status == 200:
            break
        await asyncio.sleep(0.1)
    assert statuses[-1] == 200 and len(statuses) <= 2

    audit = [json.loads(line) for line in (ctx["dir"] / "audit.log").read_text().splitlines()]
    refused = [a for a in audit if a["action"] == "proxy_request"]
    assert [(a["result"], a["reason"]) for a in refused] == [("error", "service_unavailable")]


async def test_a_deactivated_project_refuses_its_token_with_403_audited_with_both_ids(pg_app) -> None:
    client, _, upstream, ctx = pg_app
    project, token = ctx["project"], ctx["token"]
    r = await client.patch(f"/manage/projects/{project['id']}", json={"is_active": False}, headers=AUTH)
    assert r.status == 200
    status, body = await _chat(client, token["token"])
    assert (status, body["error"]["code"]) == (403, "project_inactive")
    assert project["id"] not in json.dumps(body) and token["id"] not in json.dumps(body)
    assert upstream.requests == []
    rows: list[dict[str, Any]] = []
    for _ in range(100):  # the auditor writes in the background: wait for the row, boundedly
        r = await client.get("/manage/audit", params={"action": "proxy_request"}, headers=AUTH)
        if rows := (await r.json())["events"]:
            break
        await asyncio.sleep(0.05)
    assert [(row["result"], row["reason"]) for row in rows] == [("denied", "project_inactive")]
    assert [(row["project_id"], row["token_id"]) for row in rows] == [(project["id"], token["id"])]
    audit = [json.loads(line) for line in (ctx["dir"] / "audit.log").read_text().splitlines()]
    [denied] = [a for a in audit if a["action"] == "proxy_request"]
    assert (denied["project_id"], denied["token_id"]) == (project["id"], token["id"])


async def test_a_header_with_a_bare_cr_or_lf_is_refused_before_anything_is_forwarded(pg_app) -> None:
    client, _, upstream, ctx = pg_app
    token = ctx["token"]["token"]
    host, port = client.server.host, client.server.port
    for evil in (b"X-Evil: a\rInjected: 1", b"X-Evil: a\nInjected: 1", b"X-Evil: a\x00b"):
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode()
            + b"\r\n" + evil + b"\r\nContent-Length: 2\r\n\r\n{}"
        )  # fmt: skip
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        # refused by aiohttp's HTTP parser, before any handler runs (so its body is not our JSON)
        assert status_line.split(b" ")[1] == b"400", (evil, status_line)
    assert upstream.requests == []


async def test_unknown_and_malformed_ids_are_404_and_bad_fields_422_naming_the_field(pg_app) -> None:
    client, _, _, ctx = pg_app
    for path in (
        "/manage/projects/" + str(uuid.uuid4()),
        "/manage/projects/not-a-uuid",
        "/manage/tokens/x' OR 1=1",
    ):
        r = await client.get(path, headers=AUTH)
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    r = await client.post(
        "/manage/tokens", json={"project_id": ctx["project"]["id"], "max_requests": "ten"}, headers=AUTH
    )
    body = await r.json()
    assert r.status == 422 and "max_requests" in body["error"]["message"]
    r = await client.post(
        "/manage/projects", data=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"
