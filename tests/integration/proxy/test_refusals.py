"""Requests the proxy answers itself, without forwarding: policy and token refusals, CORS preflight."""

from __future__ import annotations

import asyncio

import pytest

from llmproxy.errors import ProxyError, Refusal

JSON = {"Content-Type": "application/json"}


async def raw_request(proxy, target: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Send ``target`` on the request line exactly as written (clients would normalise it)."""
    host, port = proxy.client.host, proxy.client.port
    reader, writer = await asyncio.open_connection(host, port)
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def error_code(resp) -> str:
    return (await resp.json())["error"]["code"]


@pytest.mark.parametrize(
    "target",
    ["/v1/../manage/projects", "/v1/%2e%2e/manage/projects", "/v1/models/..%2f..%2fmanage", "/v1//models"],
)
async def test_path_tricks_are_refused_with_404_and_never_forwarded(make_proxy, target):
    proxy = await make_proxy()
    status, body = await raw_request(proxy, target, proxy.auth())
    assert status == 404
    assert b'"code":"endpoint_not_allowed"' in body
    assert proxy.upstream.requests == []


async def test_an_endpoint_not_listed_is_refused_before_the_token_is_looked_at(make_proxy):
    proxy = await make_proxy()
    resp = await proxy.client.get("/v1/chat/completionsX")  # and no token at all
    assert resp.status == 404
    assert await error_code(resp) == "endpoint_not_allowed"
    assert proxy.upstream.requests == []


async def test_a_method_not_allowed_is_refused_with_405(make_proxy):
    proxy = await make_proxy()
    resp = await proxy.request("PUT", "/v1/chat/completions", data=b"{}")
    assert resp.status == 405
    assert await error_code(resp) == "method_not_allowed"
    assert proxy.upstream.requests == []


async def test_a_param_value_outside_the_whitelist_is_refused_with_400(make_proxy):
    proxy = await make_proxy(param_whitelist={"model": ("gpt-4o", "gpt-4o-*")})
    resp = await proxy.request(
        "POST", "/v1/chat/completions", data=b'{"model": "gpt-5-pro"}', headers=proxy.auth(**JSON)
    )
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert (error["code"], error["param"]) == ("param_not_allowed", "model")
    assert "gpt-5-pro" in error["message"]
    assert proxy.upstream.requests == []
    assert proxy.authority.counted == 0


async def test_a_whitelisted_param_value_is_forwarded_with_the_body_unchanged(make_proxy):
    proxy = await make_proxy(param_whitelist={"model": ("gpt-4o", "gpt-4o-*")})
    body = b'{"model":"gpt-4o-mini","messages":[]}'
    resp = await proxy.request(
        "POST",
        "/v1/chat/completions",
        data=body,
        headers=proxy.auth(**{"Content-Type": "application/json; charset=utf-8"}),
    )
    assert resp.status == 200
    assert proxy.upstream.requests[0].body == body


async def test_an_origin_not_allowed_is_refused_with_403(make_proxy):
    proxy = await make_proxy(allowed_origins=("https://app.example",))
    resp = await proxy.request("GET", "/v1/models", headers=proxy.auth(Origin="https://evil.example"))
    assert resp.status == 403
    assert await error_code(resp) == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert proxy.upstream.requests == []


async def test_a_declared_body_over_the_limit_is_refused_with_413(make_proxy):
    proxy = await make_proxy(max_body_bytes=1000)
    resp = await proxy.request("POST", "/v1/embeddings", data=b"x" * 1001, headers=proxy.auth(**JSON))
    assert resp.status == 413
    assert await error_code(resp) == "request_too_large"
    assert proxy.upstream.requests == []


async def test_a_chunked_body_growing_over_the_limit_is_refused_with_413(make_proxy):
    proxy = await make_proxy(max_body_bytes=100_000)

    async def body():
        for _ in range(20):
            yield b"x" * 10_000

    resp = await proxy.request("POST", "/v1/embeddings", data=body(), headers=proxy.auth(**JSON))
    assert resp.status == 413
    assert await error_code(resp) == "request_too_large"
    assert proxy.upstream.requests == []


async def test_a_request_without_a_token_is_refused_with_401(make_proxy):
    proxy = await make_proxy()
    resp = await proxy.request("GET", "/v1/models", headers={})
    assert resp.status == 401
    assert await error_code(resp) == "missing_token"
    assert proxy.upstream.requests == []


async def test_a_quota_refusal_at_counting_forwards_nothing(make_proxy):
    proxy = await make_proxy()
    proxy.authority.refuse_count = ProxyError(Refusal.QUOTA_EXCEEDED)
    resp = await proxy.request("GET", "/v1/models")
    assert resp.status == 429
    assert await error_code(resp) == "quota_exceeded"
    assert proxy.upstream.requests == []
    assert proxy.auditor.records == []


@pytest.mark.parametrize(
    ("refusal", "result"), [(Refusal.PROJECT_INACTIVE, "denied"), (Refusal.SERVICE_UNAVAILABLE, "error")]
)
async def test_inactive_project_and_store_outage_are_audited(make_proxy, refusal, result):
    proxy = await make_proxy()
    proxy.authority.refuse_check = ProxyError(refusal)
    resp = await proxy.request("GET", "/v1/models", headers=proxy.auth(**{"X-Request-ID": "audit-me"}))
    assert resp.status == refusal.status
    assert await error_code(resp) == refusal.code
    [record] = proxy.auditor.records
    assert (record.action, record.result, record.reason) == ("proxy_request", result, refusal.code)
    assert (record.request_id, record.method, record.path) == ("audit-me", "GET", "/v1/models")
    assert proxy.upstream.requests == []


async def test_other_token_refusals_are_not_audited(make_proxy):
    proxy = await make_proxy()
    proxy.authority.refuse_check = ProxyError(Refusal.TOKEN_EXPIRED)
    resp = await proxy.request("GET", "/v1/models")
    assert resp.status == 401
    assert proxy.auditor.records == []


async def test_a_cors_preflight_is_answered_204_without_a_token(make_proxy):
    proxy = await make_proxy(allowed_origins=("https://app.example",))
    resp = await proxy.client.options(
        "/v1/chat/completions",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert resp.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert proxy.upstream.requests == []


async def test_a_preflight_from_an_origin_not_allowed_is_refused(make_proxy):
    proxy = await make_proxy(allowed_origins=("https://app.example",))
    resp = await proxy.client.options(
        "/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert resp.status == 403
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_a_refusal_to_an_allowed_browser_origin_is_readable_by_it(make_proxy):
    proxy = await make_proxy(allowed_origins=("https://app.example",))
    resp = await proxy.client.get("/v1/models", headers={"Origin": "https://app.example"})
    assert resp.status == 401
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
