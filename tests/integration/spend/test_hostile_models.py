"""Model names are the client's text: whatever a request names, the usage flush must still write, or one
client would stop the accounting (and so the budgets) of every token on the instance."""

from __future__ import annotations

import json

from llmproxy.store.base import UsageQuery
from tests.integration.spend.conftest import Server, chat_body, poll


async def test_a_model_name_with_a_nul_character_does_not_stop_the_usage_flush(
    postgres, start_server, tmp_path
) -> None:
    server: Server = await start_server(postgres, FILE_EVENT_LOG=str(tmp_path / "events.jsonl"))
    _, hostile = await server.add_token()
    _, other = await server.add_token(max_tokens=1_000_000)
    body = json.loads(chat_body("x", [10, 5, 0], "hi"))
    body["model"] = "gpt\u0000-evil"  # JSON "\u0000": PostgreSQL text cannot hold it
    assert (await server.chat(hostile["token"], json.dumps(body).encode())).status == 200
    assert (await server.chat(other["token"], chat_body("test-model", [7, 3, 0], "hi"))).status == 200

    async def both_written() -> bool:
        await server.flush()
        report = await server.store.usage_report(UsageQuery(group_by="token"))
        return sum(g.requests for g in report) >= 2

    await poll(both_written, "both requests accounted", deadline_s=10.0)
    by_model = {g.key: g for g in await server.store.usage_report(UsageQuery(group_by="model"))}
    assert by_model["test-model"].prompt_tokens == 7
    assert any(key.startswith("gpt") and "\x00" not in key for key in by_model)
    stored = await server.store.get_token(other["id"])
    assert stored is not None and stored.prompt_tokens + stored.completion_tokens == 10


async def test_a_usage_row_the_store_refuses_is_set_aside_and_the_others_are_written(
    database, start_server, tmp_path, caplog
) -> None:
    """An upstream reporting 10^20 prompt tokens (no database integer holds it): after a few failed
    flushes the rows are written one by one and only that one is set aside, logged."""
    server: Server = await start_server(database, FILE_EVENT_LOG=str(tmp_path / "events.jsonl"))
    _, poisoned = await server.add_token()
    _, other = await server.add_token(max_tokens=1_000_000)
    assert (await server.chat(poisoned["token"], chat_body("test-model", [10**20, 5, 0], "hi"))).status == 200
    assert (await server.chat(other["token"], chat_body("test-model", [7, 3, 0], "hi"))).status == 200

    async def others_written() -> bool:
        await server.flush()
        report = await server.store.usage_report(UsageQuery(group_by="token"))
        return any(g.key == other["id"] and g.prompt_tokens == 7 for g in report)

    await poll(others_written, "the other token's usage written", deadline_s=10.0)
    stored = await server.store.get_token(other["id"])
    assert stored is not None and stored.prompt_tokens + stored.completion_tokens == 10
    report = {g.key: g for g in await server.store.usage_report(UsageQuery(group_by="token"))}
    assert poisoned["id"] not in report  # set aside, not written as something else
    assert any("usage row set aside" in r.getMessage() for r in caplog.records)
    assert (await server.chat(other["token"], chat_body("test-model", [1, 1, 0], "hi"))).status == 200
    await poll(others_written, "flushes go on")  # and later flushes write as before
