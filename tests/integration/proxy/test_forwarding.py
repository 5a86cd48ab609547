"""What the upstream receives and what the client gets back: everything passes through unchanged,
except the token (replaced by the project key) and what identifies the client or the hop."""

from __future__ import annotations

import gzip
import json
import re

import aiohttp

from tests.fakes.upstream import CHAT_COMPLETION, error_reply, json_reply

CHAT_BODY = b'{"model": "gpt-4o-mini",  "messages":[{"role":"user","content":"h\xc3\xa9llo \\u00e9"}], "stream":false}'
JSON = {"Content-Type": "application/json"}


async def test_upstream_receives_the_project_key_and_the_exact_body_and_query(make_proxy):
    proxy = await make_proxy()
    resp = await proxy.request(
        "POST",
        "/v1/chat/completions?api-version=2024-01-01&x=%20y&x=2",
        data=CHAT_BODY,
        headers=proxy.auth(**JSON),
    )
    assert resp.status == 200
    [seen] = proxy.upstream.requests
    assert seen.method == "POST"
    assert seen.raw_path == "/v1/chat/completions?api-version=2024-01-01&x=%20y&x=2"
    assert seen.body == CHAT_BODY
    assert seen.headers["Authorization"] == f"Bearer {proxy.project_key}"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Content-Length"] == str(len(CHAT_BODY))
    assert not any(proxy.token in value for value in seen.headers.values())
    assert proxy.authority.counted == 1


async def test_status_headers_and_body_come_back_byte_for_byte(make_proxy):
    proxy = await make_proxy()
    body = b'{"id": "x",   "weird spacing": [1,2 ,3]}'
    proxy.upstream.script(
        json_reply(body, status=201, headers={"X-Custom": "kept", "openai-model": "gpt-4o"})
    )
    resp = await proxy.request("POST", "/v1/chat/completions", data=b"{}", headers=proxy.auth(**JSON))
    assert resp.status == 201
    assert await resp.read() == body
    assert resp.headers["X-Custom"] == "kept"
    assert resp.headers["openai-model"] == "gpt-4o"
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["Content-Length"] == str(len(body))
    assert resp.headers["X-Upstream-Request-ID"] == "req_fake_upstream_1"


async def test_a_gzip_body_is_passed_through_still_compressed(make_proxy):
    proxy = await make_proxy()
    proxy.upstream.script(json_reply(gzipped=True))
    async with aiohttp.ClientSession(auto_decompress=False) as raw_client:
        resp = await raw_client.post(
            proxy.client.make_url("/v1/chat/completions"),
            data=b"{}",
            headers=proxy.auth(**JSON, **{"Accept-Encoding": "gzip"}),
        )
        body = await resp.read()
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Content-Length"] == str(len(body))
    assert json.loads(gzip.decompress(body)) == CHAT_COMPLETION
    assert proxy.upstream.requests[0].headers["Accept-Encoding"] == "gzip"


async def test_the_proxy_asks_for_no_encoding_the_client_did_not_ask_for(make_proxy):
    proxy = await make_proxy()
    async with aiohttp.ClientSession(skip_auto_headers=["Accept-Encoding", "User-Agent", "Accept"]) as bare:
        await bare.get(proxy.client.make_url("/v1/models"), headers=proxy.auth())
    seen = proxy.upstream.requests[0].headers
    assert "Accept-Encoding" not in seen
    assert "User-Agent" not in seen
    assert "Accept" not in seen


async def test_an_upstream_error_is_passed_through_verbatim(make_proxy):
    proxy = await make_proxy()
    proxy.upstream.script(
        error_reply(429, "rate_limit_exceeded", "Rate limit reached", type_="requests", retry_after="7")
    )
    resp = await proxy.request("POST", "/v1/chat/completions", data=b"{}", headers=proxy.auth(**JSON))
    assert resp.status == 429
    assert resp.headers["retry-after"] == "7"
    assert await resp.json() == {
        "error": {
            "message": "Rate limit reached",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


async def test_an_upstream_redirect_is_returned_not_followed(make_proxy):
    proxy = await make_proxy()
    proxy.upstream.script(json_reply(b"", status=302, headers={"Location": "/v1/models"}))
    resp = await proxy.request("GET", "/v1/models/gpt-4o", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/v1/models"
    assert len(proxy.upstream.requests) == 1


async def test_hop_by_hop_and_client_identifying_headers_do_not_reach_the_upstream(make_proxy):
    proxy = await make_proxy()
    sent = proxy.auth(
        **JSON,
        **{
            "X-Forwarded-For": "203.0.113.9",
            "X-Real-IP": "203.0.113.9",
            "Forwarded": "for=203.0.113.9",
            "CF-Connecting-IP": "203.0.113.9",
            "Cookie": "llmproxy_session=admin-secret",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "1",
            "Keep-Alive": "timeout=5",
            "OpenAI-Organization": "org-123",
        },
    )
    await proxy.request("POST", "/v1/chat/completions", data=b"{}", headers=sent)
    seen = proxy.upstream.requests[0].headers
    for name in (
        "X-Forwarded-For",
        "X-Real-IP",
        "Forwarded",
        "CF-Connecting-IP",
        "Cookie",
        "Proxy-Authorization",
        "X-Drop-Me",
        "Keep-Alive",
    ):
        assert name not in seen, name
    assert seen["OpenAI-Organization"] == "org-123"
    assert seen["Host"] == proxy.upstream.url.removeprefix("http://")


async def test_upstream_cookies_and_hop_by_hop_headers_do_not_reach_the_client(make_proxy):
    proxy = await make_proxy()
    proxy.upstream.script(
        json_reply(
            headers={
                "Set-Cookie": "__cf_bm=abc; path=/",
                "Keep-Alive": "timeout=5",
                "Proxy-Authenticate": "Basic",
            }
        )
    )
    resp = await proxy.request("GET", "/v1/models")
    assert resp.status == 200
    for name in ("Set-Cookie", "Keep-Alive", "Proxy-Authenticate"):
        assert name not in resp.headers, name


async def test_a_large_body_streams_to_the_upstream_with_its_length(make_proxy):
    proxy = await make_proxy()
    body = b'{"input": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    resp = await proxy.request("POST", "/v1/embeddings", data=body, headers=proxy.auth(**JSON))
    assert resp.status == 200
    seen = proxy.upstream.requests[0]
    assert seen.body == body
    assert seen.headers["Content-Length"] == str(len(body))
    assert "Transfer-Encoding" not in seen.headers


async def test_a_chunked_request_body_is_streamed_through_unchanged(make_proxy):
    proxy = await make_proxy()
    parts = [b'{"input": "', b"a" * 70000, b"b" * 70000, b'"}']

    async def body():
        for part in parts:
            yield part

    resp = await proxy.request("POST", "/v1/embeddings", data=body(), headers=proxy.auth(**JSON))
    assert resp.status == 200
    assert proxy.upstream.requests[0].body == b"".join(parts)


async def test_the_project_upstream_base_url_wins_and_keeps_its_path(make_proxy, upstream):
    proxy = await make_proxy(upstream_base_url=f"{upstream.url}/openai/")
    resp = await proxy.request("GET", "/v1/models?limit=2")
    assert resp.status == 200
    assert upstream.requests[0].raw_path == "/openai/v1/models?limit=2"


async def test_the_clients_request_id_is_echoed_and_sent_upstream(make_proxy):
    proxy = await make_proxy()
    resp = await proxy.request("GET", "/v1/models", headers=proxy.auth(**{"X-Request-ID": "client-req.42"}))
    assert resp.headers["X-Request-ID"] == "client-req.42"
    assert proxy.upstream.requests[0].headers["X-Request-ID"] == "client-req.42"


async def test_a_request_id_is_generated_when_the_client_sends_none(make_proxy):
    proxy = await make_proxy()
    resp = await proxy.request("GET", "/v1/models")
    request_id = resp.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert proxy.upstream.requests[0].headers["X-Request-ID"] == request_id


async def test_server_timing_reports_proxy_and_upstream_durations(make_proxy):
    proxy = await make_proxy()
    resp = await proxy.request("POST", "/v1/chat/completions", data=CHAT_BODY, headers=proxy.auth(**JSON))
    match = re.fullmatch(r"proxy;dur=(\d+\.\d{3}), upstream;dur=(\d+\.\d{3})", resp.headers["Server-Timing"])
    assert match is not None
    assert float(match.group(1)) >= 0 and float(match.group(2)) > 0


async def test_a_browser_origin_gets_cors_headers_on_the_proxied_response(make_proxy):
    proxy = await make_proxy(allowed_origins=("https://app.example",))
    proxy.upstream.script(json_reply(headers={"Vary": "Accept-Encoding"}))
    resp = await proxy.request("GET", "/v1/models", headers=proxy.auth(Origin="https://app.example"))
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "X-Request-ID" in resp.headers["Access-Control-Expose-Headers"]
    assert resp.headers["Vary"] == "Accept-Encoding, Origin"


async def test_a_head_request_gets_the_upstream_headers_and_no_body(make_proxy):
    proxy = await make_proxy(allowed_methods=("GET", "HEAD"))
    resp = await proxy.request("HEAD", "/v1/models")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(len(json.dumps(CHAT_COMPLETION)))
    assert await resp.read() == b""
    assert proxy.upstream.requests[0].method == "HEAD"
    assert (await proxy.request("GET", "/v1/models")).status == 200  # the connection is still sound


async def test_an_empty_upstream_answer_keeps_its_status(make_proxy):
    proxy = await make_proxy()
    proxy.upstream.script(json_reply(b"", status=204))
    resp = await proxy.request("DELETE", "/v1/files/file-abc")
    assert resp.status == 204
    assert await resp.read() == b""
    assert proxy.upstream.requests[0].raw_path == "/v1/files/file-abc"


async def test_requests_in_a_row_share_one_kept_alive_upstream_connection(make_proxy):
    proxy = await make_proxy()
    for n in range(5):
        async with proxy.request("POST", "/v1/chat/completions", json={"n": n}) as resp:
            assert resp.status == 200
            await resp.read()

    assert len(proxy.upstream.requests) == 5
    assert len(set(proxy.upstream.peers)) == 1
