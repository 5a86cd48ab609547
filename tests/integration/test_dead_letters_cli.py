"""Dead letters as an operator meets them: a backend refuses an event, `llm-proxy events dead` lists,
shows, replays (to that service only, once) and purges it; with the in-memory bus and with Redis Streams."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.fakes.lunary import FakeLunary
from tests.fakes.upstream import FakeUpstream
from tests.integration.test_metrics_endpoints import RunningProxy, running_proxy

LLM_PROXY = str(Path(sys.executable).parent / "llm-proxy")
REFUSAL = {"status": 400, "body": '{"error": "bad run"}'}
FIELDS = {"id", "time", "service", "error", "deliveries", "original_id", "event"}


class Cli:
    """`llm-proxy events dead …` as a subprocess with the server's settings."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}

    async def __call__(self, *args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            LLM_PROXY, "events", "dead", *args, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    async def letters(self) -> list[dict[str, Any]]:
        code, out, err = await self("list", "--json")
        assert code == 0, err
        return [json.loads(line) for line in out.splitlines()]


async def wait_for(condition: Any, timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := await condition()) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    return result


def lunary_run_ids(lunary: FakeLunary) -> list[str]:
    return [
        e["runId"]
        for r in lunary.requests
        for e in (r.get("json") or {}).get("events", [])
        if e.get("event") == "start"
    ]


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture
async def lunary() -> AsyncIterator[FakeLunary]:
    async with FakeLunary() as fake:
        yield fake


# --- in-memory bus: DEAD_LETTER_FILE ----------------------------------------------------------------


@pytest.fixture
async def memory_proxy(tmp_path, upstream, lunary) -> AsyncIterator[tuple[RunningProxy, Cli]]:
    env = {
        "FILE_EVENT_LOG": str(tmp_path / "log" / "events.jsonl"),
        "DISPATCHER_SERVICES": "lunary",
        "LLM_PROXY_ENDPOINT": lunary.url,
        "LLM_PROXY_API_KEY": lunary.api_key,
    }
    (tmp_path / "log").mkdir()
    async with running_proxy(tmp_path, upstream, **env) as proxy:
        yield proxy, Cli(env)


async def test_an_event_the_backend_refuses_is_kept_in_the_dead_letter_file(memory_proxy, lunary, tmp_path):
    proxy, _ = memory_proxy
    lunary.inject(REFUSAL)
    assert await proxy.chat() == 200
    file = tmp_path / "log" / "dead-letters.jsonl"  # the default: beside the event log
    assert await wait_for(lambda: _lines(file)), "no dead letter written"
    [letter] = [json.loads(line) for line in file.read_text().splitlines()]
    assert set(letter) == FIELDS
    assert letter["service"] == "lunary" and "400" in letter["error"]
    assert letter["event"]["path"] == "/v1/chat/completions" and letter["event"]["status"] == 200
    assert oct(file.stat().st_mode & 0o777) == oct(0o640)
    assert proxy.token not in file.read_text()


async def _lines(file: Path) -> list[str]:
    return file.read_text().splitlines() if file.exists() else []


async def test_list_show_replay_and_purge_the_dead_letter_file(memory_proxy, lunary):
    proxy, cli = memory_proxy
    for n in (1, 2):  # one at a time: two events sent in one batch would share one refusal
        lunary.inject(REFUSAL)
        assert await proxy.chat() == 200
        letters = await wait_for(lambda n=n: _count(cli, n))
        assert letters is not None, f"no dead letter #{n}"
    first, second = letters

    code, out, _ = await cli("list")
    assert code == 0 and first["id"] in out and "POST /v1/chat/completions 200" in out and "lunary" in out
    assert all(len(line) <= 100 for line in out.splitlines())
    code, out, _ = await cli("show", first["id"])
    assert code == 0 and json.loads(out) == first

    before = len(lunary_run_ids(lunary))
    code, out, err = await cli("replay", first["id"])
    assert code == 0, out + err
    assert "lunary: 1 delivered" in out
    assert lunary_run_ids(lunary)[before:] == [first["event"]["id"]]
    assert [letter["id"] for letter in await cli.letters()] == [second["id"]]  # the replayed one left

    code, _, err = await cli("replay", first["id"])  # once: it is gone
    assert code == 1 and f"no dead letter with id {first['id']}" in err
    code, out, _ = await cli("purge", "--service", "lunary")
    assert code == 0 and "purged 1" in out
    assert await cli.letters() == []


async def _count(cli: Cli, n: int) -> list[dict[str, Any]] | None:
    letters = await cli.letters()
    return letters if len(letters) >= n else None


async def test_a_replay_the_backend_refuses_again_becomes_a_new_dead_letter(memory_proxy, lunary):
    proxy, cli = memory_proxy
    lunary.inject(REFUSAL)
    assert await proxy.chat() == 200
    [letter] = await wait_for(cli.letters)
    lunary.inject({"status": 422, "body": "still bad"})
    code, out, _ = await cli("replay", "--all")
    assert code == 1 and "1 refused again" in out
    [again] = await cli.letters()
    assert again["id"] != letter["id"] and again["event"] == letter["event"] and "422" in again["error"]


@pytest.mark.parametrize("args", [["replay"], ["purge"], ["frobnicate"]])
async def test_replay_and_purge_without_a_choice_exit_two_with_one_line(memory_proxy, args):
    _, cli = memory_proxy
    code, _, err = await cli(*args)
    assert code == 2 and err.count("\n") == 1


# --- Redis Streams: <stream>:dead -------------------------------------------------------------------


@pytest.fixture
async def stream_key() -> AsyncIterator[str]:
    key = f"test-dead-{uuid.uuid4().hex}"
    yield key
    redis = Redis(host="127.0.0.1", port=6379)
    keys = [k async for k in redis.scan_iter(match=f"{key}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def test_replay_from_the_stream_reaches_its_service_once_and_no_other(
    tmp_path, upstream, lunary, stream_key
):
    events = tmp_path / "events.jsonl"
    env = {
        "LLM_PROXY_EVENT_BUS": "redis-streams",
        "REDIS_STREAM_KEY": stream_key,
        "REDIS_STREAM_BLOCK_TIME": "200ms",
        "DISPATCHER_SERVICES": "file,lunary",
        "FILE_EVENT_LOG": str(events),
        "LLM_PROXY_ENDPOINT": lunary.url,
        "LLM_PROXY_API_KEY": lunary.api_key,
    }
    cli = Cli(env)
    redis = Redis(host="127.0.0.1", port=6379)
    try:
        async with running_proxy(tmp_path, upstream, **env) as proxy:
            lunary.inject(REFUSAL)
            assert await proxy.chat() == 200
            [letter] = await wait_for(cli.letters, timeout=30)
            assert set(letter) == FIELDS and letter["service"] == "lunary" and "400" in letter["error"]
            assert await wait_for(lambda: _lines(events))
            lunary_before = len(lunary_run_ids(lunary))

            code, out, err = await cli("replay", "--service", "lunary")
            assert code == 0, err
            assert "replayed 1 dead letters to lunary (1)" in out
            assert await wait_for(lambda: _run_ids_after(lunary, lunary_before), timeout=30) == [
                letter["event"]["id"]
            ]
            assert await redis.xlen(f"{stream_key}:dead") == 0
            # the file service acked the replayed entry unread: nothing pending, nothing written twice
            assert await wait_for(lambda: _all_acked(redis, stream_key), timeout=30)
            assert len(events.read_text().splitlines()) == 1
            assert len(lunary_run_ids(lunary)) == lunary_before + 1
            # counted at ack time: the file service delivered the event once, the replay not again
            assert await redis.hget(f"{stream_key}:dispatcher-totals", "file:delivered") == b"1"
    finally:
        await redis.aclose()


async def _run_ids_after(lunary: FakeLunary, before: int) -> list[str]:
    return lunary_run_ids(lunary)[before:]


async def _all_acked(redis: Redis, stream: str) -> bool:
    groups = await redis.xinfo_groups(stream)
    return len(groups) == 2 and all(g["pending"] == 0 and g.get("lag") in (0, None) for g in groups)
