"""Dispatcher figures in /metrics as an operator reads them: lag per service on the in-memory bus."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.lunary import FakeLunary
from tests.fakes.upstream import FakeUpstream
from tests.integration.test_metrics_endpoints import poll, running_proxy


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


async def test_every_in_memory_service_has_its_own_lag_sample(tmp_path, upstream):
    async with FakeLunary() as lunary:
        env = {
            "FILE_EVENT_LOG": str(tmp_path / "events.jsonl"),
            "DISPATCHER_SERVICES": "file,lunary",
            "LLM_PROXY_ENDPOINT": lunary.url,
            "LLM_PROXY_API_KEY": lunary.api_key,
        }
        async with running_proxy(tmp_path, upstream, **env) as proxy:
            for _ in range(3):
                assert await proxy.chat() == 200

            def delivered(d):
                return all(d["dispatchers"][s]["delivered"] == 3 for s in ("file", "lunary"))

            document = await poll(proxy.metrics, delivered)
            lines = (await proxy.prometheus()).splitlines()
    assert delivered(document), document["dispatchers"]
    assert document["dispatchers"]["file"]["lag"] == 0
    assert document["dispatchers"]["lunary"]["lag"] == 0
    assert 'llm_proxy_dispatcher_lag{service="file"} 0.0' in lines
    assert 'llm_proxy_dispatcher_lag{service="lunary"} 0.0' in lines
