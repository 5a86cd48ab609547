"""Observers get one settled Flow per forwarded request, after it finished, with bodies cut at the bounds."""

from __future__ import annotations

import time

import pytest

from llmproxy.auth.grant import Limits
from tests.fakes.upstream import json_reply

JSON = {"Content-Type": "application/json"}


async def test_an_exchange_describes_the_forwarded_request_and_its_response(make_proxy):
    proxy = await make_proxy(observe=True)
    before = time.time()
    body = b'{"model": "gpt-4o-mini", "messages": []}'
    resp = await proxy.request(
        "POST",
        "/v1/chat/completions?trace=1",
        data=body,
        headers=proxy.auth(**JSON, **{"X-Request-ID": "obs-1"}),
    )
    answer = await resp.read()
    [flow] = proxy.flows
    assert flow.request_id == "obs-1"
    assert (flow.token_id, flow.project_id) == ("tok-1", "proj-1")
    assert (flow.method, flow.path, flow.query) == ("POST", "/v1/chat/completions", "trace=1")
    assert flow.status == 200
    assert before <= flow.started_at <= time.time()
    assert flow.ttfb_ms is not None and 0 < flow.ttfb_ms <= flow.duration_ms
    assert flow.request_body == body and flow.request_body_truncated is False
    assert flow.response_body == answer and flow.response_body_truncated is False
    assert flow.request_headers["X-Request-ID"] == "obs-1"
    upstream_headers = {k.lower(): v for k, v in flow.response_headers.items()}
    assert upstream_headers["x-request-id"] == "req_fake_upstream_1"  # as the upstream sent it
    assert (flow.stream, flow.error) == (False, None)


@pytest.mark.parametrize(("size", "truncated"), [(10, False), (11, True)])
async def test_the_request_body_is_captured_up_to_its_bound(make_proxy, size, truncated):
    proxy = await make_proxy(observe=True, max_request_body_bytes=10)
    body = b"0123456789abc"[:size]
    await proxy.request("POST", "/v1/embeddings", data=body, headers=proxy.auth(**JSON))
    [flow] = proxy.flows
    assert flow.request_body == body[:10]
    assert flow.request_body_truncated is truncated
    assert proxy.upstream.requests[0].body == body  # capture never shortens what is forwarded


@pytest.mark.parametrize(("size", "truncated"), [(20, False), (21, True)])
async def test_the_response_body_is_captured_up_to_its_bound(make_proxy, size, truncated):
    proxy = await make_proxy(observe=True, max_response_body_bytes=20)
    answer = (b"x" * 30)[:size]
    proxy.upstream.script(json_reply(answer))
    resp = await proxy.request("GET", "/v1/models")
    assert await resp.read() == answer
    [flow] = proxy.flows
    assert flow.response_body == answer[:20]
    assert flow.response_body_truncated is truncated


async def test_a_streamed_request_body_is_captured_up_to_its_bound(make_proxy):
    proxy = await make_proxy(observe=True, max_request_body_bytes=100)
    big = b"y" * (2 * 1024 * 1024)  # over the read-whole size: streamed to the upstream
    await proxy.request("POST", "/v1/embeddings", data=big, headers=proxy.auth(**JSON))
    [flow] = proxy.flows
    assert (flow.request_body, flow.request_body_truncated) == (big[:100], True)
    assert proxy.upstream.requests[0].body == big


async def test_refused_requests_produce_no_exchange(make_proxy):
    proxy = await make_proxy(observe=True)
    await proxy.request("GET", "/v1/models", headers={})  # 401
    await proxy.request("PUT", "/v1/models")  # 405
    assert proxy.flows == []


async def test_a_failing_observer_neither_affects_the_client_nor_the_other_observers(make_proxy):
    proxy = await make_proxy(observe=True)

    def broken(exchange):
        raise RuntimeError("observer bug")

    proxy.observers.insert(0, broken)
    resp = await proxy.request("GET", "/v1/models")
    assert resp.status == 200
    assert len(proxy.flows) == 1


async def test_with_no_observer_a_plain_tokens_flow_is_neither_captured_nor_metered(make_proxy):
    proxy = await make_proxy()  # events off: no observer
    resp = await proxy.request("POST", "/v1/chat/completions", data=b'{"model": "m"}')
    await resp.read()
    assert resp.status == 200
    assert proxy.metered == []


async def test_with_no_observer_a_metered_tokens_flow_goes_to_the_meter_with_its_bodies(make_proxy):
    proxy = await make_proxy(limits=Limits(metered=True))
    resp = await proxy.request("POST", "/v1/chat/completions", data=b'{"model": "m"}')
    body = await resp.read()
    [flow] = proxy.metered
    assert (flow.watched, flow.metered) == (True, True)
    assert (flow.request_body, flow.response_body) == (b'{"model": "m"}', body)


async def test_with_an_observer_the_meter_sees_nothing(make_proxy):
    proxy = await make_proxy(observe=True, limits=Limits(metered=True))
    resp = await proxy.request("POST", "/v1/chat/completions", data=b'{"model": "m"}')
    await resp.read()
    assert len(proxy.flows) == 1 and proxy.metered == []
