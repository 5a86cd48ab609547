"""An event in full, on SQLite and PostgreSQL: timings, usage and its cost from the price table, the
project and token by name, headers redacted, bodies exactly as captured and shown as text (a
``<script>`` in a prompt stays text); links that no longer point at the event say so."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from llmproxy.events.model import Event, PromptTokensDetails, Usage, encode_event
from llmproxy.store.base import Store
from tests.integration.admin.conftest import MANAGEMENT_TOKEN, Admin, MakeAdmin

BEARER = {"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}
PROMPT = '{"messages": [{"role": "user", "content": "<script>alert(\\"x\\")</script>"}]}'
ANSWER = '{"content": "</pre><img src=x onerror=alert(1)>"}'
PRICES = "test-model:\n  input: 2.0\n  output: 8.0\n  cached: 0.5\n"  # USD per 1M tokens


def captured(project_id: str, token_id: str, **fields: Any) -> Event:
    values: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "request_id": "req-detail-1",
        "project_id": project_id,
        "token_id": token_id,
        "method": "POST",
        "path": "/v1/chat/completions",
        "query": "api_key=sk-querysecret12345&x=1",
        "status": 200,
        "started_at": "2025-03-04T05:06:07.123456Z",
        "duration_ms": 12.5,
        "ttfb_ms": 3.5,
        "model": "test-model",
        "usage": Usage(
            prompt_tokens=1000,
            completion_tokens=500,
            total_tokens=1500,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=200),
        ),
        "usage_source": "estimated",
        "request_headers": {"x-api-key": "sk-headersecret123456", "x-trace": "<b>trace</b>"},
        "response_headers": {"content-type": "application/json"},
        "request_body": PROMPT,
        "response_body": ANSWER,
        **fields,
    }
    return Event(**values)


def write(log: Path, *events: Event) -> list[int]:
    offsets = []
    with log.open("ab") as f:
        for e in events:
            offsets.append(f.tell())
            f.write(encode_event(e) + b"\n")
    return offsets


async def setup(make_admin: MakeAdmin, store: Store, tmp_path: Path) -> tuple[Admin, Any, Any]:
    prices = tmp_path / "prices.yaml"
    prices.write_text(PRICES)
    admin = await make_admin(store=store, PRICES_PATH=str(prices))
    await admin.sign_in()
    body = {"name": "Acme <b>", "api_key": "sk-upstream-detail-0123456"}
    project = await (await admin.client.post("/manage/projects", json=body, headers=BEARER)).json()
    body = {"project_id": project["id"], "name": "web <i>app</i>"}
    token = await (await admin.client.post("/manage/tokens", json=body, headers=BEARER)).json()
    return admin, project, token


async def detail(admin: Admin, event: Event, at: int) -> str:
    response = await admin.client.get(f"/admin/events/{event.id}?at={at}", allow_redirects=False)
    assert response.status == 200, await response.text()
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    return await response.text()


def fact(page: str, label: str) -> str:
    found = re.search(rf"<dt>{re.escape(label)}</dt><dd>(.*?)</dd>", page)
    assert found, label
    return found.group(1)


async def test_an_event_in_full_shows_bodies_as_text_never_as_markup(
    any_store: Store, make_admin: MakeAdmin, tmp_path: Path
) -> None:
    admin, project, token = await setup(make_admin, any_store, tmp_path)
    event = captured(project["id"], token["id"])
    [at] = write(tmp_path / "events.jsonl", event)
    page = await detail(admin, event, at)
    assert '<pre class="body" id="request-body">' in page
    assert "&lt;script&gt;alert(\\&quot;x\\&quot;)&lt;/script&gt;" in page
    assert "&lt;/pre&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "<b>" not in page and "<i>app" not in page


async def test_an_event_in_full_shows_timings_usage_cost_and_names(
    any_store: Store, make_admin: MakeAdmin, tmp_path: Path
) -> None:
    admin, project, token = await setup(make_admin, any_store, tmp_path)
    event = captured(project["id"], token["id"])
    [at] = write(tmp_path / "events.jsonl", event)
    page = await detail(admin, event, at)
    assert fact(page, "Duration") == "12.5 ms" and fact(page, "Time to first byte") == "3.5 ms"
    tokens = "1,000 prompt (200 cached) + 500 completion = 1,500 (estimated by the proxy)"
    assert fact(page, "Tokens") == tokens
    assert fact(page, "Cost") == "$0.0057"  # (800 × 2 + 200 × 0.5 + 500 × 8) / 1M
    assert fact(page, "Model") == "test-model"
    assert ">Acme &lt;b&gt;</a>" in fact(page, "Project")
    assert f">web &lt;i&gt;app&lt;/i&gt; ({token['token_hint']})</a>" in fact(page, "Token")
    assert fact(page, "Request id") == "<code>req-detail-1</code>"
    assert "Error" not in page


async def test_the_token_s_metadata_and_an_error_are_shown_as_text(signed_in: Admin, tmp_path: Path) -> None:
    event = captured(
        str(uuid.uuid4()), str(uuid.uuid4()), metadata={"team": "<b>ml</b>"}, error="<i>reset</i>"
    )
    [at] = write(tmp_path / "events.jsonl", event)
    page = await detail(signed_in, event, at)
    assert fact(page, "Token metadata") == "<code>{&quot;team&quot;:&quot;&lt;b&gt;ml&lt;/b&gt;&quot;}</code>"
    assert fact(page, "Error") == "&lt;i&gt;reset&lt;/i&gt;"


async def test_headers_and_query_are_redacted_again_whatever_wrote_the_log(
    any_store: Store, make_admin: MakeAdmin, tmp_path: Path
) -> None:
    admin, project, token = await setup(make_admin, any_store, tmp_path)
    event = captured(project["id"], token["id"])
    [at] = write(tmp_path / "events.jsonl", event)
    page = await detail(admin, event, at)
    assert "sk-headersecret123456" not in page and "sk-querysecret12345" not in page
    assert "<td><code>x-api-key</code></td><td><code>[REDACTED]</code></td>" in page
    assert "<td><code>x-trace</code></td><td><code>&lt;b&gt;trace&lt;/b&gt;</code></td>" in page
    assert "api_key=[REDACTED]&amp;x=1" in page


async def test_a_truncated_or_binary_body_says_so(signed_in: Admin, tmp_path: Path) -> None:
    event = captured(
        str(uuid.uuid4()), str(uuid.uuid4()), request_body_truncated=True, body_encoding="base64"
    )
    [at] = write(tmp_path / "events.jsonl", event)
    page = await detail(signed_in, event, at)
    assert "Not text: shown base64-encoded, as captured; truncated at the capture limit" in page


async def test_an_event_of_ids_the_store_cannot_hold_is_still_shown(
    any_store: Store, make_admin: MakeAdmin, tmp_path: Path
) -> None:
    admin, _, _ = await setup(make_admin, any_store, tmp_path)
    event = captured("not-a-uuid", "", usage=None, model=None)
    [at] = write(tmp_path / "events.jsonl", event)
    page = await detail(admin, event, at)
    assert fact(page, "Tokens") == "not reported" and fact(page, "Cost") == "—"
    assert ">not-a-uuid</a>" in fact(page, "Project")


async def test_the_events_list_links_each_row_to_its_detail(signed_in: Admin, tmp_path: Path) -> None:
    first, second = (
        captured(str(uuid.uuid4()), str(uuid.uuid4())),
        captured(str(uuid.uuid4()), str(uuid.uuid4())),
    )
    write(tmp_path / "events.jsonl", first, second)
    listed = (await (await signed_in.client.get("/admin/api/events")).json())["events"]
    for summary, event in zip(listed, [second, first], strict=True):
        page = await detail(signed_in, event, summary["at"])
        assert f"<code>{event.id}</code>" in page


@pytest.mark.parametrize(
    ("link", "status", "says"),
    [
        ("/admin/events/{other}?at={at}", 404, "no longer at that place"),
        ("/admin/events/{id}?at={mid}", 404, "no longer at that place"),
        ("/admin/events/{id}?at=99999999", 404, "no longer at that place"),
        ("/admin/events/not-an-id?at={at}", 422, "malformed"),
        ("/admin/events/{id}", 422, "malformed"),
        ("/admin/events/{id}?at=-1", 422, "malformed"),
        ("/admin/events/{id}?at=1e3", 422, "malformed"),
        ("/admin/events/{id}?at=" + "9" * 40, 422, "malformed"),
        ("/admin/events/{id}?at=%C2%B2", 422, "malformed"),  # "²" is a digit to str.isdigit, not to int
    ],
)
async def test_a_link_that_no_longer_points_at_its_event_says_so(
    signed_in: Admin, tmp_path: Path, link: str, status: int, says: str
) -> None:
    event = captured(str(uuid.uuid4()), str(uuid.uuid4()))
    [_, at] = write(tmp_path / "events.jsonl", captured(str(uuid.uuid4()), str(uuid.uuid4())), event)
    url = link.format(id=event.id, other=uuid.uuid4(), at=at, mid=at + 10)
    response = await signed_in.client.get(url)
    assert response.status == status
    assert response.content_type == "text/html"
    assert says in await response.text()


async def test_without_an_event_log_no_event_is_shown(make_admin: MakeAdmin) -> None:
    admin = await make_admin(FILE_EVENT_LOG="")
    await admin.sign_in()
    response = await admin.client.get(f"/admin/events/{uuid.uuid4()}?at=0")
    assert response.status == 404
    assert "No event log is configured" in await response.text()


async def test_without_a_session_an_event_sends_to_sign_in(admin: Admin) -> None:
    response = await admin.client.get(f"/admin/events/{uuid.uuid4()}?at=0", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/admin/login"
