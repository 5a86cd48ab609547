"""The Events page's reads of the JSONL event log: filters by project, token, status, model and text,
older pages beyond the first 50, bounded reads (a budget of bytes per answer, lines too long skipped),
and every bad filter a 422 naming the field."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from llmproxy.admin import event_log
from llmproxy.admin.event_log import EventFilter, EventMatcher, read_page
from llmproxy.events.model import Event, Usage, encode_event
from tests.integration.admin.conftest import Admin

ACME = "11111111-1111-4111-8111-111111111111"
BETA = "44444444-4444-4444-8444-444444444444"
WEB = "22222222-2222-4222-8222-222222222222"
BATCH = "33333333-3333-4333-8333-333333333333"


def event(n: int, **fields: Any) -> Event:
    values: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "request_id": f"req-{n}",
        "project_id": ACME,
        "token_id": WEB,
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "started_at": f"2025-01-01T00:{n // 60:02d}:{n % 60:02d}.000000Z",
        "duration_ms": 10.0,
        "model": "gpt-4o-mini",
        "usage": Usage(prompt_tokens=n, completion_tokens=1, total_tokens=n + 1),
        "request_body": f'{{"messages": [{{"content": "question {n}"}}]}}',
        "response_body": f'{{"answer": "answer {n}"}}',
        **fields,
    }
    return Event(**values)


def write(log: Path, events: list[Event]) -> list[int]:
    """Append the events; the offsets their lines begin at."""
    offsets = []
    with log.open("ab") as f:
        for e in events:
            offsets.append(f.tell())
            f.write(encode_event(e) + b"\n")
    return offsets


async def api(admin: Admin, query: str) -> Any:
    response = await admin.client.get(f"/admin/api/events{query}")
    assert response.status == 200, await response.text()
    return await response.json()


async def test_older_pages_reach_back_to_the_first_event_without_gaps_or_repeats(
    signed_in: Admin, tmp_path: Path
) -> None:
    events = [event(n) for n in range(120)]
    offsets = write(tmp_path / "events.jsonl", events)
    seen: list[Any] = []
    page = await api(signed_in, "")
    pages = 1
    seen += page["events"]
    while page["older"] is not None:
        page = await api(signed_in, f"?before={page['older']}")
        seen += page["events"]
        pages += 1
    assert pages == 3 and [len(seen[:50]), len(seen[50:100]), len(seen[100:])] == [50, 50, 20]
    assert [e["id"] for e in seen] == [e.id for e in reversed(events)]
    assert [e["at"] for e in seen] == list(reversed(offsets))


@pytest.mark.parametrize(
    ("query", "wanted"),
    [
        (f"?project_id={BETA}", {2, 5}),
        (f"?token_id={BATCH.upper()}", {3}),
        ("?status=429", {4}),
        ("?status=5xx", {5, 6}),
        ("?status=4XX", {4}),
        ("?model=gpt-4o", {6}),
        ("?q=SECRET%20plan", {3}),  # in a body, any case
        ("?q=req-7", {7}),  # a request id
        ("?q=%22quoted%22", {1}),  # a JSON-escaped quote inside a body
        ("?q=upstream%20timed", {5}),  # the error
        (f"?project_id={BETA}&status=5xx", {5}),
        ("?q=nowhere", set()),
        ("?model=", {0, 1, 2, 3, 4, 5, 6, 7}),  # empty: no filter
    ],
)
async def test_filters_pick_the_matching_events(
    signed_in: Admin, tmp_path: Path, query: str, wanted: set[int]
) -> None:
    write(
        tmp_path / "events.jsonl",
        [
            event(0),
            event(1, request_body='say "quoted" please'),
            event(2, project_id=BETA),
            event(3, token_id=BATCH, request_body='{"content": "the Secret Plan"}'),
            event(4, status=429),
            event(5, project_id=BETA, status=502, error="upstream timed out"),
            event(6, status=500, model="gpt-4o"),
            event(7),
        ],
    )
    page = await api(signed_in, query)
    assert {int(e["time"][17:19]) for e in page["events"]} == wanted


async def test_the_text_filter_does_not_look_in_base64_bodies_or_field_names(
    signed_in: Admin, tmp_path: Path
) -> None:
    write(
        tmp_path / "events.jsonl",
        [event(1, request_body="c2VjcmV0", body_encoding="base64"), event(2)],
    )
    assert (await api(signed_in, "?q=c2VjcmV0"))["events"] == []
    assert (await api(signed_in, "?q=project_id"))["events"] == []


async def test_the_live_tail_applies_the_filters_to_what_was_appended(
    signed_in: Admin, tmp_path: Path
) -> None:
    log = tmp_path / "events.jsonl"
    write(log, [event(1, status=500)])
    first = await api(signed_in, "?status=5xx")
    write(log, [event(2, status=200), event(3, status=503), event(4, status=200)])
    tail = await api(signed_in, f"?status=5xx&after={first['cursor']}")
    assert [e["status"] for e in tail["events"]] == [503]
    assert tail["cursor"] == log.stat().st_size and tail["older"] is None


async def test_a_page_reads_at_most_the_scan_budget_and_says_where_to_go_on(
    signed_in: Admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_log, "SCAN_BUDGET", 64 * 1024)
    monkeypatch.setattr(event_log, "CHUNK", 8 * 1024)
    write(tmp_path / "events.jsonl", [event(0, status=500), *(event(n) for n in range(1, 1500))])
    page = await api(signed_in, "?status=500")
    assert page["events"] == [] and page["older"] is not None
    assert page["scanned"] <= 64 * 1024 + 8 * 1024
    hops = 0
    while not page["events"]:
        page = await api(signed_in, f"?status=500&before={page['older']}")
        hops += 1
    assert [e["status"] for e in page["events"]] == [500] and hops > 1
    assert page["older"] is None  # that was the start of the log


@pytest.mark.parametrize("chunk", [7, 100, 333, 4096])
async def test_lines_across_chunk_boundaries_are_put_back_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(event_log, "CHUNK", chunk)
    log = tmp_path / "events.jsonl"
    events = [event(n) for n in range(12)]
    offsets = write(log, events)
    log.write_bytes(log.read_bytes() + b"\n" + encode_event(event(99))[:50])  # a blank line, a half one
    page = await read_page(str(log), EventMatcher(EventFilter()))
    assert [(e.at, e.id) for e in page.events] == list(
        zip(reversed(offsets), [e.id for e in reversed(events)], strict=True)
    )
    assert page.cursor == offsets[-1] + len(encode_event(events[-1])) + 2  # past the blank line


async def test_a_line_longer_than_the_limit_is_skipped_not_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_log, "MAX_LINE", 4096)
    monkeypatch.setattr(event_log, "CHUNK", 1024)
    log = tmp_path / "events.jsonl"
    write(log, [event(1), event(2, request_body="x" * 20_000), event(3)])
    page = await read_page(str(log), EventMatcher(EventFilter()))
    assert [e.time[-10:-8] for e in page.events] == ["03", "01"]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("?status=abc", "status"),
        ("?status=600", "status"),
        ("?status=5x", "status"),
        ("?project_id=acme", "project_id"),
        ("?token_id=1", "token_id"),
        ("?before=-5", "before"),
        ("?before=end", "before"),
        ("?after=1&before=2", "before"),
        ("?q=" + "x" * 201, "q"),
        ("?model=" + "m" * 257, "model"),
        ("?colour=red", "colour"),
    ],
)
async def test_a_bad_filter_is_refused_with_422_naming_it(signed_in: Admin, query: str, param: str) -> None:
    response = await signed_in.client.get(f"/admin/api/events{query}")
    assert response.status == 422
    error = (await response.json())["error"]
    assert error["param"] == param and error["message"]


async def test_a_status_that_is_not_a_code_says_what_would_be(signed_in: Admin) -> None:
    response = await signed_in.client.get("/admin/api/events?status=oops")
    assert "a status code like 429 or a class like 5xx" in (await response.json())["error"]["message"]


async def test_a_query_that_is_not_utf8_is_refused_not_a_500(signed_in: Admin, tmp_path: Path) -> None:
    write(tmp_path / "events.jsonl", [event(1)])
    response = await signed_in.client.get("/admin/api/events?q=%ED%A0%80%FF")
    assert response.status in (200, 422)
    assert response.content_type == "application/json"
