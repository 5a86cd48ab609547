"""Malformed HTTP gets a JSON 400, a count in llm_proxy_bad_requests_total{reason} and at most one DEBUG
line; a client hanging up mid-body is no server error."""

from __future__ import annotations

import asyncio
import logging

import pytest

from llmproxy.metrics import BAD_REQUEST_REASONS
from tests.integration.edge.conftest import StartEdge, poll, read_response
from tests.integration.manage.support import AUTH

MALFORMED = [
    ("bad_request_line", b"GARBAGE\r\n\r\n"),
    ("bad_request_line", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"),  # TLS on the HTTP port
    ("bad_request_line", b"GET /x HTTP/9.9\r\nHost: proxy\r\n\r\n"),
    ("bad_request_line", b"GET /a\x01b HTTP/1.1\r\nHost: proxy\r\n\r\n"),
    ("bad_header", b"GET /health HTTP/1.1\r\nHost: proxy\r\nBad Header\r\n\r\n"),
    ("bad_header", b"GET /health HTTP/1.1\r\nHost: proxy\r\nX-A: a\x01b\r\n\r\n"),
    (
        "bad_framing",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ),
    ("bad_framing", b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n"),
    ("bad_framing", b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
    ("too_large", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"),
    ("too_large", b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n"),
]


def _loud(records: list[logging.LogRecord]) -> list[str]:
    return [
        f"{r.name} {r.levelname} {r.getMessage()}"
        for r in records
        if r.levelno >= logging.WARNING or r.exc_info
    ]


@pytest.mark.parametrize(
    ("reason", "request_bytes"), MALFORMED, ids=[f"{r}-{i}" for i, (r, _) in enumerate(MALFORMED)]
)
async def test_malformed_http_gets_a_json_400_is_counted_and_logs_one_debug_line_at_most(
    start_edge: StartEdge, caplog: pytest.LogCaptureFixture, reason: str, request_bytes: bytes
) -> None:
    edge = await start_edge()
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    reader, writer = await edge.connect()
    writer.write(request_bytes)
    response = await read_response(reader)
    writer.close()
    assert response.status == 400
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "bad_request"
    served = [r for r in caplog.records if r.name.startswith(("aiohttp", "llmproxy"))]
    assert _loud(caplog.records) == [] and len(served) <= 1, [r.getMessage() for r in served]

    counts = (await edge.metrics())["bad_requests"]
    assert counts[reason] == 1 and sum(counts.values()) == 1, counts
    assert f'llm_proxy_bad_requests_total{{reason="{reason}"}} 1.0' in await edge.prometheus()
    assert edge.upstream.requests == []


async def test_a_management_client_hanging_up_mid_body_is_no_server_error(
    start_edge: StartEdge, caplog: pytest.LogCaptureFixture
) -> None:
    edge = await start_edge()
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    reader, writer = await edge.connect()
    auth = f"Authorization: {AUTH['Authorization']}"
    head = edge.head(
        "POST", "/manage/projects", auth, "Content-Type: application/json", "Content-Length: 100", token=False
    )
    writer.write(head + b'{"name": "gone')
    await writer.drain()
    await asyncio.sleep(0.1)  # the handler is reading the body
    writer.close()
    said = await poll(lambda: any("hung up" in r.getMessage() for r in caplog.records), timeout=1.0)
    assert _loud(caplog.records) == []
    assert said  # the DEBUG line saying so, once the server saw the connection go
    assert (await edge.metrics())["bad_requests"] == dict.fromkeys(BAD_REQUEST_REASONS, 0)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/manage/projects"])
async def test_a_body_whose_chunked_framing_breaks_mid_way_gets_a_400_not_a_hang(
    start_edge: StartEdge, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    edge = await start_edge()
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    reader, writer = await edge.connect()
    proxied = path.startswith("/v1")
    auth = () if proxied else (f"Authorization: {AUTH['Authorization']}",)
    framing = ("Content-Type: application/json", "Transfer-Encoding: chunked")
    head = edge.head("POST", path, *auth, *framing, token=proxied)
    writer.write(head + b'5\r\n{"a":\r\n')
    await writer.drain()
    await asyncio.sleep(0.1)  # the head is parsed and its handler reads the body: then the framing breaks
    writer.write(b"zz\r\n")
    response = await read_response(reader)
    assert response.status == 400 and response.json()["error"]["code"] == "bad_request"
    writer.close()
    assert _loud(caplog.records) == []
    assert (await edge.metrics())["bad_requests"]["bad_framing"] == 1


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/manage/projects"])
async def test_a_client_gone_before_its_100_continue_is_no_server_error(
    start_edge: StartEdge, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    edge = await start_edge()
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    reader, writer = await edge.connect()
    head = edge.head(
        "POST", path, "Expect: 100-continue", "Content-Type: application/json", "Content-Length: 10"
    )
    writer.write(head)
    writer.transport.abort()  # aiohttp writes "100 Continue" before any handler runs: to a closed socket
    said = await poll(lambda: any("hung up" in r.getMessage() for r in caplog.records), timeout=1.0)
    assert _loud(caplog.records) == []
    assert said
    assert edge.upstream.requests == []
