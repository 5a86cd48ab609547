"""The Auditor: JSON lines to the audit file, rows to the store, secrets masked, never blocking."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from llmproxy.audit import MAX_QUEUED, Auditor, audit_record, mask_secrets
from llmproxy.config import AuditSettings
from llmproxy.context import REQUEST_ID
from llmproxy.errors import StoreUnavailable
from llmproxy.store.base import AuditRecord
from tests.spec import AUDIT_FIELDS

RFC3339_MICROS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
TOKEN = "sk-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-xyz"


class AuditStore:
    """Records insert_audit batches; ``down`` raises StoreUnavailable, ``refuse`` rejects rows by action."""

    def __init__(self) -> None:
        self.rows: list[AuditRecord] = []
        self.attempts = 0
        self.down = False
        self.refuse: set[str] = set()

    async def insert_audit(self, records: list[AuditRecord]) -> None:
        self.attempts += 1
        if self.down:
            raise StoreUnavailable("audit store down")
        if any(r.action in self.refuse for r in records):
            raise ValueError("result")
        self.rows.extend(records)


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "audit.log"


@pytest.fixture
def store() -> AuditStore:
    return AuditStore()


@pytest.fixture
def auditor(log_file: Path, store: AuditStore) -> Auditor:
    return Auditor(AuditSettings(enabled=True, log_file=str(log_file), store_in_db=True), store)  # type: ignore[arg-type]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def sample(action: str = "token.create", **details: object) -> AuditRecord:
    return audit_record(
        action, "success", actor="management_api", project_id="p1", token_id="t1", details=details
    )


async def poll(condition, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_record_becomes_one_json_line_with_every_field(auditor, log_file) -> None:
    auditor.record(sample(max_requests=5))
    await auditor.flush()
    [line] = lines(log_file)
    assert set(line) == AUDIT_FIELDS
    assert RFC3339_MICROS_UTC.fullmatch(line["timestamp"])
    assert line["action"] == "token.create"
    assert line["result"] == "success"
    assert line["actor"] == "management_api"
    assert (line["project_id"], line["token_id"]) == ("p1", "t1")
    assert line["reason"] is None and line["client_ip"] is None
    assert line["details"] == {"max_requests": 5}


async def test_the_timestamp_keeps_microseconds_even_when_zero(auditor, log_file) -> None:
    record = sample()
    record.timestamp = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    auditor.record(record)
    await auditor.flush()
    assert lines(log_file)[0]["timestamp"] == "2024-01-02T03:04:05.000000Z"


async def test_a_naive_timestamp_is_taken_as_utc(auditor, log_file) -> None:
    record = sample()
    record.timestamp = datetime(2024, 1, 2, 3, 4, 5, 6)
    auditor.record(record)
    await auditor.flush()
    assert lines(log_file)[0]["timestamp"] == "2024-01-02T03:04:05.000006Z"


async def test_lines_are_appended_in_order(auditor, log_file) -> None:
    log_file.parent.mkdir(parents=True)
    log_file.write_text('{"earlier": true}\n')
    for i in range(3):
        auditor.record(sample(n=i))
    await auditor.flush()
    assert [line.get("details", {}).get("n") for line in lines(log_file)] == [None, 0, 1, 2]


async def test_rows_land_in_the_store_with_the_same_ids_as_the_lines(auditor, log_file, store) -> None:
    for i in range(3):
        auditor.record(sample(n=i))
    await auditor.flush()
    assert [r.id for r in store.rows] == [line["id"] for line in lines(log_file)]
    assert all(len(r.id) == 32 for r in store.rows)
    assert [r.details for r in store.rows] == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_disabled_auditing_records_nothing(log_file, store) -> None:
    auditor = Auditor(AuditSettings(enabled=False, log_file=str(log_file)), store)  # type: ignore[arg-type]
    auditor.record(sample())
    await auditor.flush()
    assert not log_file.exists()
    assert store.rows == [] and store.attempts == 0


async def test_store_in_db_false_writes_only_the_file(log_file, store) -> None:
    auditor = Auditor(AuditSettings(log_file=str(log_file), store_in_db=False), store)  # type: ignore[arg-type]
    auditor.record(sample())
    await auditor.flush()
    assert len(lines(log_file)) == 1
    assert store.attempts == 0


async def test_an_empty_log_file_setting_writes_only_the_store(tmp_path, store) -> None:
    auditor = Auditor(AuditSettings(log_file=""), store)  # type: ignore[arg-type]
    auditor.record(sample())
    await auditor.flush()
    assert len(store.rows) == 1
    assert list(tmp_path.iterdir()) == []


async def test_secrets_in_details_are_masked_in_file_and_store(auditor, log_file, store) -> None:
    auditor.record(
        sample(
            api_key="sk-proj-0123456789abcdefSECRET",
            header=f"Bearer {TOKEN}",
            nested={"list": [f"token was {TOKEN}", 3], TOKEN: "as a key"},
        )
    )
    await auditor.flush()
    text = log_file.read_text()
    assert "0123456789abcdefSECRET" not in text and TOKEN not in text and TOKEN[3:20] not in text
    [row] = store.rows
    assert row.details == {
        "api_key": "sk-proj…CRET",
        "header": "Bearer [redacted]",
        "nested": {"list": ["token was sk-AbCd…-xyz", 3], "sk-AbCd…-xyz": "as a key"},
    }
    assert lines(log_file)[0]["details"] == row.details


async def test_secrets_in_reason_and_user_agent_are_masked_too(auditor, log_file, store) -> None:
    record = sample()
    record.reason = f"bad token {TOKEN}"
    record.user_agent = f"curl (bearer {TOKEN})"
    auditor.record(record)
    await auditor.flush()
    assert TOKEN not in log_file.read_text()
    assert store.rows[0].reason == "bad token sk-AbCd…-xyz"
    assert store.rows[0].user_agent == "curl (bearer [redacted]"


def test_words_merely_containing_sk_dash_are_not_masked() -> None:
    assert mask_secrets("task-management-dashboard") == "task-management-dashboard"
    assert mask_secrets({"hint": "sk-AbCd…wxyz"}) == {"hint": "sk-AbCd…wxyz"}  # a hint stays a hint


def test_masking_twice_changes_nothing_more() -> None:
    once = mask_secrets({"a": f"Bearer {TOKEN}", "b": TOKEN})
    assert mask_secrets(once) == once


async def test_details_that_are_not_json_are_written_as_text(auditor, log_file, store) -> None:
    auditor.record(sample(when=datetime(2024, 1, 2, tzinfo=UTC), what=object))
    await auditor.flush()
    details = lines(log_file)[0]["details"]
    assert details["when"] == "2024-01-02T00:00:00Z"
    assert details["what"] == "<class 'object'>"


async def test_a_store_outage_loses_no_file_line_and_rows_are_retried(auditor, log_file, store) -> None:
    store.down = True
    auditor.record(sample(n=1))
    await auditor.flush()
    assert len(lines(log_file)) == 1
    assert store.rows == []
    store.down = False
    await auditor.flush()
    assert [r.details for r in store.rows] == [{"n": 1}]
    await auditor.flush()
    assert len(store.rows) == 1  # stored once, not again
    assert len(lines(log_file)) == 1  # and the line was not written twice


async def test_a_row_the_store_refuses_does_not_hold_back_the_others(auditor, store) -> None:
    store.refuse = {"bad.action"}
    auditor.record(sample("token.create"))
    auditor.record(sample("bad.action"))
    auditor.record(sample("token.revoke"))
    await auditor.flush()
    assert [r.action for r in store.rows] == ["token.create", "token.revoke"]


async def test_the_writer_keeps_running_through_a_store_outage(auditor, log_file, store) -> None:
    store.down = True
    task = asyncio.ensure_future(auditor.run())
    try:
        auditor.record(sample(n=1))
        await poll(lambda: log_file.exists() and store.attempts >= 2)  # written, then retried
        store.down = False
        await poll(lambda: len(store.rows) == 1)
        auditor.record(sample(n=2))
        await poll(lambda: len(store.rows) == 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [line["details"]["n"] for line in lines(log_file)] == [1, 2]


async def test_an_unwritable_file_does_not_stop_the_store_rows(tmp_path, store) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    auditor = Auditor(AuditSettings(log_file=str(blocker / "audit.log")), store)  # type: ignore[arg-type]
    auditor.record(sample())
    await auditor.flush()
    assert len(store.rows) == 1


async def test_overflow_drops_the_oldest_and_counts_them(auditor, log_file) -> None:
    for i in range(MAX_QUEUED + 5):
        auditor.record(sample(n=i))
    assert auditor.dropped == 5
    await auditor.flush()
    written = lines(log_file)
    assert len(written) == MAX_QUEUED
    assert written[0]["details"]["n"] == 5


async def test_a_record_that_cannot_be_prepared_is_dropped_without_raising(auditor, log_file) -> None:
    broken = sample(n=1)
    broken.timestamp = None  # type: ignore[assignment]
    auditor.record(broken)
    auditor.record(sample(n=2))
    await auditor.flush()
    assert [line["details"] for line in lines(log_file)] == [{"n": 2}]


def test_record_never_blocks_outside_an_event_loop(auditor, log_file) -> None:
    auditor.record(sample())  # no running loop: queued, not written
    assert not log_file.exists()
    asyncio.run(auditor.flush())
    assert len(lines(log_file)) == 1


async def test_a_write_cancelled_midway_is_finished_once_by_flush(auditor, log_file, store) -> None:
    writing, gate = asyncio.Event(), asyncio.Event()
    insert = store.insert_audit

    async def slow_insert(records):
        writing.set()
        await gate.wait()
        await insert(records)

    store.insert_audit = slow_insert
    auditor.record(sample(n=1))
    interrupted = asyncio.ensure_future(auditor.flush())
    await writing.wait()
    interrupted.cancel()
    await asyncio.gather(interrupted, return_exceptions=True)
    gate.set()
    await auditor.flush()
    assert len(store.rows) == 1
    assert len(lines(log_file)) == 1


async def test_audit_record_takes_who_and_where_from_the_request_but_not_x_forwarded_for() -> None:
    built: list[AuditRecord] = []

    async def handler(request: web.Request) -> web.Response:
        request[REQUEST_ID] = "req-123"
        built.append(audit_record("proxy_request", "denied", reason="project_inactive", request=request))
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.post(
            "/v1/chat/completions?x=1",
            headers={"User-Agent": "tests/1.0", "X-Forwarded-For": "203.0.113.9"},
        )
        assert response.status == 200
    [record] = built
    assert record.client_ip == "127.0.0.1"
    assert (record.request_id, record.user_agent) == ("req-123", "tests/1.0")
    assert (record.method, record.path) == ("POST", "/v1/chat/completions")
    assert (record.action, record.result, record.reason, record.actor) == (
        "proxy_request",
        "denied",
        "project_inactive",
        "system",
    )
    assert record.timestamp.tzinfo is UTC
    assert abs((datetime.now(UTC) - record.timestamp).total_seconds()) < 60


def test_audit_record_without_a_request_leaves_the_request_fields_empty() -> None:
    record = audit_record("cache.purge", "success", details={"deleted": 3})
    assert (record.request_id, record.client_ip, record.user_agent, record.method, record.path) == (None,) * 5
    assert record.details == {"deleted": 3}


async def test_concurrent_flushes_store_each_row_once(store) -> None:
    auditor = Auditor(AuditSettings(log_file=""), store)  # type: ignore[arg-type]
    writing, gate = asyncio.Event(), asyncio.Event()
    insert = store.insert_audit

    async def slow_insert(records):
        writing.set()
        await gate.wait()
        await asyncio.sleep(0)  # a real driver yields here: let other flushes run
        await insert(records)

    store.insert_audit = slow_insert
    auditor.record(sample(n=1))
    first = asyncio.ensure_future(auditor.flush())
    await writing.wait()
    auditor.record(sample(n=2))
    others = [asyncio.ensure_future(auditor.flush()) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *others)
    assert [r.details for r in store.rows] == [{"n": 1}, {"n": 2}]
