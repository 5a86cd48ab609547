"""An upstream that cannot be reached or does not answer in time becomes a clear 502 or 504."""

from __future__ import annotations

import socket

from tests.fakes.upstream import json_reply


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_an_unreachable_upstream_is_a_502_upstream_unavailable(make_proxy):
    proxy = await make_proxy(observe=True, upstream_base_url=f"http://127.0.0.1:{closed_port()}")
    resp = await proxy.request("GET", "/v1/models")
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "upstream_unavailable"
    assert resp.headers["X-Request-ID"]
    [flow] = proxy.flows
    assert (flow.status, flow.error, flow.ttfb_ms) == (502, "upstream_unavailable", None)


async def test_the_502_names_the_upstream_error_class_and_nothing_secret(make_proxy):
    proxy = await make_proxy(upstream_base_url=f"http://127.0.0.1:{closed_port()}")
    resp = await proxy.request("GET", "/v1/models")
    message = (await resp.json())["error"]["message"]
    assert message == "Upstream unavailable (ConnectionRefusedError)"
    assert proxy.project_key not in message and proxy.token not in message


async def test_an_upstream_too_slow_to_answer_is_a_504_upstream_timeout(make_proxy):
    proxy = await make_proxy(observe=True, timeouts={"response_header": 0.2})
    proxy.upstream.script(proxy.upstream.hang())
    resp = await proxy.request("POST", "/v1/chat/completions", data=b"{}")
    assert resp.status == 504
    body = await resp.json()
    assert body["error"]["code"] == "upstream_timeout"
    assert body["error"]["type"] == "upstream_error"
    [flow] = proxy.flows
    assert (flow.status, flow.error) == (504, "upstream_timeout")


async def test_the_whole_exchange_is_bounded_by_the_request_timeout(make_proxy):
    proxy = await make_proxy(timeouts={"request": 0.3, "response_header": 30})
    proxy.upstream.script(proxy.upstream.hang())
    resp = await proxy.request("GET", "/v1/models")
    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "upstream_timeout"


async def test_the_pool_recovers_after_a_failed_exchange(make_proxy):
    proxy = await make_proxy(timeouts={"response_header": 0.2})
    proxy.upstream.script(proxy.upstream.hang(), json_reply())
    assert (await proxy.request("GET", "/v1/models")).status == 504
    assert (await proxy.request("GET", "/v1/models")).status == 200
