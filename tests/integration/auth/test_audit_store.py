"""The Auditor on real stores: JSON lines in the file, the same rows in audit_events, no secret in either."""

from __future__ import annotations

import json
import re
from pathlib import Path

from llmproxy.audit import Auditor, audit_record
from llmproxy.auth.tokens import generate_token
from llmproxy.config import AuditSettings
from llmproxy.store.base import AuditQuery
from tests.spec import AUDIT_FIELDS


async def test_records_become_file_lines_and_store_rows_without_secrets(store, tmp_path: Path) -> None:
    log_file = tmp_path / "audit" / "audit.log"
    auditor = Auditor(AuditSettings(log_file=str(log_file)), store)
    raw_token, upstream_key = generate_token(), "sk-proj-" + "K" * 40
    auditor.record(
        audit_record(
            "token.create",
            "success",
            actor="management_api",
            project_id="p-1",
            token_id="t-1",
            details={"token": raw_token, "api_key": upstream_key, "max_requests": 5},
        )
    )
    auditor.record(
        audit_record(
            "proxy_request",
            "denied",
            reason="project_inactive",
            project_id="p-1",
            details={"authorization": f"Bearer {raw_token}"},
        )
    )
    await auditor.flush()

    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [set(line) for line in lines] == [AUDIT_FIELDS, AUDIT_FIELDS]
    assert [(line["action"], line["result"]) for line in lines] == [
        ("token.create", "success"),
        ("proxy_request", "denied"),
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"]) for line in lines)

    rows, total = await store.list_audit(AuditQuery(project_id="p-1"))
    assert total == 2
    by_id = {row.id: row for row in rows}
    assert set(by_id) == {line["id"] for line in lines}
    created = by_id[lines[0]["id"]]
    assert (created.actor, created.token_id, created.result) == ("management_api", "t-1", "success")
    assert created.details == lines[0]["details"]
    assert created.details["max_requests"] == 5
    assert created.details["token"].endswith("…" + raw_token[-4:])
    denied = by_id[lines[1]["id"]]
    assert (denied.reason, denied.details) == ("project_inactive", {"authorization": "Bearer [redacted]"})

    stored = json.dumps([row.details for row in rows])
    for secret in (raw_token, raw_token[3:15], upstream_key, "K" * 12):
        assert secret not in log_file.read_text()
        assert secret not in stored


async def test_a_closed_store_keeps_the_file_line_and_the_row_arrives_later(store, tmp_path: Path) -> None:
    log_file = tmp_path / "audit.log"
    auditor = Auditor(AuditSettings(log_file=str(log_file)), store)
    await store.close()
    auditor.record(audit_record("cache.purge", "success", details={"deleted": 2}))
    await auditor.flush()
    assert len(log_file.read_text().splitlines()) == 1
    await store.open()
    await auditor.flush()
    rows, total = await store.list_audit(AuditQuery(action="cache.purge"))
    assert total == 1 and rows[0].details == {"deleted": 2}
    assert len(log_file.read_text().splitlines()) == 1
