"""The live tail behind the Events page: the newest lines of the JSONL event log as summaries, never
headers or bodies, and only what was appended since the last poll. (Filters, pages and the detail
page: test_event_search.py.)"""

from __future__ import annotations

import uuid
from pathlib import Path

from llmproxy.admin.event_log import EventFilter, EventMatcher, EventPage, read_page
from llmproxy.events.model import Event, Usage, encode_event
from tests.integration.admin.conftest import Admin, MakeAdmin

SECRET_BODY = "a prompt nobody else should read"
SUMMARY_KEYS = {
    "at",
    "id",
    "time",
    "status",
    "method",
    "path",
    "model",
    "duration_ms",
    "tokens",
    "project_id",
    "token_id",
}


def event(n: int, *, body: str = SECRET_BODY, event_id: str | None = None) -> Event:
    return Event(
        id=event_id or str(uuid.uuid4()),
        request_id=f"req-{n}",
        project_id="11111111-1111-4111-8111-111111111111",
        token_id="22222222-2222-4222-8222-222222222222",
        method="POST",
        path="/v1/chat/completions",
        status=200 + n,
        started_at=f"2025-01-01T00:00:{n:02d}.000000Z",
        duration_ms=10.5 + n,
        model="gpt-4o-mini",
        usage=Usage(prompt_tokens=n, completion_tokens=1, total_tokens=n + 1),
        request_headers={"Authorization": "Bearer [redacted]", "X-Custom": "header-value-secret"},
        response_headers={"Set-Cookie": "x=1"},
        request_body=body,
        response_body=body,
    )


async def newest(log: Path) -> EventPage:
    return await read_page(str(log), EventMatcher(EventFilter()))


def append(path: Path, *events: Event, tail: bytes = b"") -> None:
    with path.open("ab") as f:
        f.write(b"".join(encode_event(e) + b"\n" for e in events) + tail)


async def test_the_events_api_answers_summaries_without_headers_or_bodies(
    signed_in: Admin, tmp_path: Path
) -> None:
    log = tmp_path / "events.jsonl"
    append(log, event(1), event(2), event(3, event_id="33333333-3333-4333-8333-333333333333"))
    response = await signed_in.client.get("/admin/api/events")
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    text = await response.text()
    for secret in (SECRET_BODY, "header-value-secret", "Authorization", "Set-Cookie", "req-1"):
        assert secret not in text
    tail = await response.json()
    assert tail["configured"] is True
    assert tail["cursor"] == (tmp_path / "events.jsonl").stat().st_size
    assert [e["status"] for e in tail["events"]] == [203, 202, 201]  # newest first
    assert all(set(e) == SUMMARY_KEYS for e in tail["events"])
    assert tail["events"][0] == {
        "at": log.read_bytes().rindex(b"\n", 0, -1) + 1,  # where the last line begins: its detail's link
        "id": "33333333-3333-4333-8333-333333333333",
        "time": "2025-01-01T00:00:03.000000Z",
        "status": 203,
        "method": "POST",
        "path": "/v1/chat/completions",
        "model": "gpt-4o-mini",
        "duration_ms": 13.5,
        "tokens": 4,
        "project_id": "11111111-1111-4111-8111-111111111111",
        "token_id": "22222222-2222-4222-8222-222222222222",
    }


async def test_polling_after_the_cursor_returns_only_whole_lines_appended_since(
    signed_in: Admin, tmp_path: Path
) -> None:
    log = tmp_path / "events.jsonl"
    append(log, event(1))
    first = await (await signed_in.client.get("/admin/api/events")).json()
    half_written = encode_event(event(9))[:40]
    append(log, event(2), tail=half_written)  # the dispatcher is in the middle of a line
    second = await (await signed_in.client.get(f"/admin/api/events?after={first['cursor']}")).json()
    assert [e["status"] for e in second["events"]] == [202]
    assert second["cursor"] == log.stat().st_size - len(half_written)
    nothing_new = await (await signed_in.client.get(f"/admin/api/events?after={second['cursor']}")).json()
    assert nothing_new["events"] == [] and nothing_new["cursor"] == second["cursor"]


async def test_a_cursor_past_the_end_of_a_rotated_log_starts_over(signed_in: Admin, tmp_path: Path) -> None:
    append(tmp_path / "events.jsonl", event(1))
    tail = await (await signed_in.client.get("/admin/api/events?after=999999")).json()
    assert [e["status"] for e in tail["events"]] == [201]


async def test_a_bad_cursor_is_refused_with_422(signed_in: Admin) -> None:
    response = await signed_in.client.get("/admin/api/events?after=-1")
    assert response.status == 422
    assert (await response.json())["error"]["param"] == "after"


async def test_without_an_event_log_the_api_says_it_is_not_configured(make_admin: MakeAdmin) -> None:
    admin = await make_admin(FILE_EVENT_LOG="")
    await admin.sign_in()
    assert await (await admin.client.get("/admin/api/events")).json() == {
        "configured": False,
        "events": [],
        "cursor": 0,
        "older": None,
        "scanned": 0,
    }


async def test_a_missing_log_file_is_an_empty_tail(signed_in: Admin) -> None:
    tail = await (await signed_in.client.get("/admin/api/events")).json()
    assert tail == {"configured": True, "events": [], "cursor": 0, "older": None, "scanned": 0}


async def test_the_tail_finds_the_newest_50_even_when_each_line_is_bigger_than_the_window(
    tmp_path: Path,
) -> None:
    log = tmp_path / "big.jsonl"
    append(log, *(event(n % 60, body="x" * 35_000) for n in range(60)))
    tail = await newest(log)
    assert len(tail.events) == 50
    assert [e.status for e in tail.events] == [200 + n % 60 for n in reversed(range(10, 60))]
    assert tail.cursor == log.stat().st_size


async def test_lines_that_are_not_events_are_skipped(tmp_path: Path) -> None:
    log = tmp_path / "mixed.jsonl"
    log.write_bytes(b"not json\n" + encode_event(event(1)) + b'\n{"status": "oops"}\n\n')
    tail = await newest(log)
    assert [e.status for e in tail.events] == [201]
