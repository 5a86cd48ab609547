"""The admin UI's dead letters: a count with a link on the Dispatchers page, and the entries' page."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from redis.asyncio import Redis

from tests.integration.admin.conftest import Admin, MakeAdmin

SECRET_PROMPT = "a prompt that stays out of the admin API"


def event(n: int) -> dict[str, object]:
    return {"id": f"event-{n}", "method": "POST", "path": "/v1/chat/completions", "status": 200,
            "request_body": SECRET_PROMPT}  # fmt: skip


def write_letters(path: Path, count: int) -> None:
    """Dead letters as the in-memory bus writes them (README: one JSON line each)."""
    lines = [
        json.dumps({"id": f"170000000000{n}-abc{n}", "time": f"2026-12-06T10:00:0{n}Z", "service": "lunary",
                    "error": "lunary: HTTP 400", "deliveries": 1, "original_id": f"event-{n}", "event": event(n)})
        for n in range(count)
    ]  # fmt: skip
    path.write_text("".join(line + "\n" for line in lines))


async def dead_letters(admin: Admin, limit: str = "50") -> tuple[int, dict]:
    response = await admin.client.get("/admin/api/dead-letters", params={"limit": limit})
    return response.status, await response.json()


async def test_the_dispatchers_page_links_the_dead_letter_count_to_the_entries(make_admin: MakeAdmin) -> None:
    admin = await make_admin()
    await admin.sign_in()
    page = await (await admin.client.get("/admin/dispatchers")).text()
    assert 'id="dead-count"' in page and 'href="/admin/dead-letters"' in page
    entries = await admin.client.get("/admin/dead-letters", allow_redirects=False)
    assert entries.status == 200
    assert "/admin/static/dead-letters.js" in await entries.text()


async def test_the_count_and_newest_entries_come_from_the_dead_letter_file(
    make_admin: MakeAdmin, tmp_path
) -> None:
    admin = await make_admin()
    write_letters(tmp_path / "dead-letters.jsonl", 3)  # beside FILE_EVENT_LOG: the default place
    await admin.sign_in()
    status, page = await dead_letters(admin, "2")
    assert status == 200
    assert (page["configured"], page["count"]) == (True, 3)
    assert [e["event_id"] for e in page["entries"]] == ["event-2", "event-1"]  # newest first
    assert page["entries"][0]["path"] == "/v1/chat/completions" and page["entries"][0]["service"] == "lunary"
    assert SECRET_PROMPT not in json.dumps(page)
    assert (await dead_letters(admin, "0"))[1]["count"] == 3


async def test_the_count_comes_from_the_dead_letter_stream(make_admin: MakeAdmin) -> None:
    stream = f"test-admin-dead-{uuid.uuid4().hex}"
    redis = Redis(host="127.0.0.1", port=6379)
    try:
        for n in range(2):
            await redis.xadd(f"{stream}:dead", {"event": json.dumps(event(n)), "error": "HTTP 400",
                                                 "service": "helicone", "original_id": "1-0", "deliveries": 1})  # fmt: skip
        admin = await make_admin(LLM_PROXY_EVENT_BUS="redis-streams", REDIS_STREAM_KEY=stream)
        await admin.sign_in()
        status, page = await dead_letters(admin)
    finally:
        await redis.delete(f"{stream}:dead")
        await redis.aclose()
    assert status == 200
    assert (page["count"], page["where"]) == (2, f"{stream}:dead")
    assert [e["service"] for e in page["entries"]] == ["helicone", "helicone"]


async def test_the_dead_letters_api_needs_a_session_and_a_sane_limit(make_admin: MakeAdmin) -> None:
    admin = await make_admin()
    assert (await dead_letters(admin))[0] == 401
    await admin.sign_in()
    assert (await dead_letters(admin, "lots"))[0] == 422
    assert (await dead_letters(admin, "²"))[0] == 422  # a digit to str.isdigit, not to int: never a 500
