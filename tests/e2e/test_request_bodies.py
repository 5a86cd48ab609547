"""Request bodies cross the proxy exactly as the client sent them: Content-Encoding, bytes and framing.

The proxy once let aiohttp decode a gzip request body and forwarded the decoded bytes under the
client's compressed Content-Length: what went past that length became the next request on the pooled
upstream connection, and the next project's request (its upstream key in the head) became that
request's body. These tests speak raw HTTP to the real `llm-proxy server` and look at what a real
loopback upstream received.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import zlib
from pathlib import Path

import pytest

from tests.e2e.conftest import MANAGEMENT_TOKEN, ServerProcess
from tests.fakes.upstream import FakeUpstream

KEY_A = "sk-upstream-key-of-project-a-0123456789"
KEY_B = "sk-upstream-key-of-project-b-9876543210"
SMUGGLED = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 300\r\n\r\n"


async def raw_exchange(port: int, head: bytes, body: bytes = b"", timeout: float = 20) -> tuple[int, bytes]:
    """Send one request with ``Connection: close`` over a raw socket: (status, whole response); status 0
    when no answer came within ``timeout``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), timeout)
    except TimeoutError:
        return 0, b""
    finally:
        writer.close()
    return int(data.split(b" ", 2)[1]), data


def post_head(path: str, token: str, length: int | None, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: proxy", f"Authorization: Bearer {token}", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(body: bytes, size: int = 40_000) -> bytes:
    pieces = [
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)
    ]
    return b"".join(pieces) + b"0\r\n\r\n"


def smuggling_body(random_bytes: int) -> bytes:
    """A gzip body whose decoded form is ``random_bytes`` random bytes, zeros, then SMUGGLED, where the
    decoded bytes past the compressed length are exactly SMUGGLED (the attacker's arithmetic)."""
    prefix = random.Random(13).randbytes(random_bytes)
    zeros = 0
    for _ in range(200):
        compressed = gzip.compress(prefix + bytes(zeros) + SMUGGLED, compresslevel=6, mtime=0)
        short = len(compressed) - (len(prefix) + zeros)
        if short == 0:
            return compressed
        zeros += short if abs(short) > 1 else 1
    raise AssertionError("no zero padding lines the smuggled request up")  # pragma: no cover


async def two_projects(server: ServerProcess) -> tuple[str, str]:
    tokens = []
    for name, key in (("project-a", KEY_A), ("project-b", KEY_B)):
        project = await server.manage("project", "create", "--name", name, "--api-key", key)
        tokens.append((await server.manage("token", "generate", "--project-id", project["id"]))["token"])
    return tokens[0], tokens[1]


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")  # pragma: no cover


@pytest.mark.parametrize("random_bytes", [1_300_000, 300_000], ids=["streamed", "read-whole"])
async def test_a_gzip_body_cannot_smuggle_a_request_onto_the_next_projects_connection(
    make_server, random_bytes
):
    body = smuggling_body(random_bytes)
    async with FakeUpstream() as upstream:
        server = await make_server(UPSTREAM_BASE_URL=upstream.url)
        token_a, token_b = await two_projects(server)
        head = post_head("/v1/chat/completions", token_a, len(body), Content_Encoding="gzip")
        status_a, _ = await raw_exchange(server.port, head, body)
        plain = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"%s"}]}' % (b"b" * 400)
        status_b, answer_b = await raw_exchange(
            server.port,
            post_head("/v1/chat/completions", token_b, len(plain), Content_Type="application/json"),
            plain,
        )
    assert (status_a, status_b) == (200, 200)
    assert [r.path for r in upstream.requests] == ["/v1/chat/completions"] * 2  # no /x
    first, second = upstream.requests
    assert first.headers["Authorization"] == f"Bearer {KEY_A}"
    assert first.headers["Content-Encoding"] == "gzip"
    assert first.headers["Content-Length"] == str(len(body))
    assert first.body == body  # the compressed bytes, not aiohttp's decoded copy
    assert second.headers["Authorization"] == f"Bearer {KEY_B}"
    assert second.body == plain
    assert all(KEY_B.encode() not in r.body for r in upstream.requests)
    assert b"chat.completion" in answer_b


@pytest.mark.parametrize(
    "coding, body",
    [
        ("gzip", gzip.compress(b'{"model":"gpt-4o-mini","messages":[]}' * 50, mtime=0)),
        ("deflate", zlib.compress(b'{"model":"gpt-4o-mini","messages":[]}' * 50)),
        ("br", bytes(range(256)) * 8),  # the proxy never needs to understand what it only passes on
        ("gzip, deflate", zlib.compress(gzip.compress(b'{"model":"x"}', mtime=0))),
    ],
    ids=["gzip", "deflate", "br", "stacked"],
)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_compressed_body_arrives_byte_identical_with_its_content_encoding(
    make_server, coding, body, framing
):
    async with FakeUpstream() as upstream:
        server = await make_server(UPSTREAM_BASE_URL=upstream.url)
        token, _ = await two_projects(server)
        length = len(body) if framing == "content-length" else None
        wire = body if length is not None else chunked(body, 300)
        head = post_head(
            "/v1/chat/completions", token, length, Content_Encoding=coding, Content_Type="application/json"
        )
        status, _ = await raw_exchange(server.port, head, wire)
    assert status == 200
    (received,) = upstream.requests
    assert received.body == body
    assert received.headers["Content-Encoding"] == coding
    if length is not None:
        assert received.headers["Content-Length"] == str(len(body))


def gzip_bomb() -> bytes:
    """1 GiB of zeros as a gzip stream of 16 members of 64 MiB each (~1 MB on the wire)."""
    member = gzip.compress(bytes(64 << 20), compresslevel=9, mtime=0)
    return member * 16


WHITELIST = "param_whitelist:\n  model: ['gpt-4o*']\n"


@pytest.mark.parametrize("inspected", [True, False], ids=["whitelist", "passed-through"])
async def test_a_decompression_bomb_never_inflates_in_the_server(make_server, tmp_path, inspected):
    bomb = gzip_bomb()
    env = {}
    if inspected:
        (tmp_path / "api.yaml").write_text(WHITELIST)
        env["API_CONFIG_PATH"] = str(tmp_path / "api.yaml")
    async with FakeUpstream() as upstream:
        server = await make_server(UPSTREAM_BASE_URL=upstream.url, **env)
        token, _ = await two_projects(server)
        assert server.process is not None
        before = peak_rss_kib(server.process.pid)
        head = post_head(
            "/v1/chat/completions", token, len(bomb), Content_Encoding="gzip", Content_Type="application/json"
        )
        status, answer = await raw_exchange(server.port, head, bomb)
        grown_mib = (peak_rss_kib(server.process.pid) - before) / 1024
    if inspected:
        assert status == 413, answer
        assert b'"request_too_large"' in answer
        assert upstream.requests == []
    else:
        assert status == 200, answer
        assert upstream.requests[0].body == bomb
    assert grown_mib < 100, f"the server's peak RSS grew by {grown_mib:.0f} MiB"


@pytest.mark.parametrize("inspected", [True, False], ids=["whitelist", "passed-through"])
async def test_a_body_labelled_gzip_that_is_not_gzip_is_a_400_or_passes_untouched(
    make_server, tmp_path, inspected
):
    env = {}
    if inspected:
        (tmp_path / "api.yaml").write_text(WHITELIST)
        env["API_CONFIG_PATH"] = str(tmp_path / "api.yaml")
    body = b'{"model":"gpt-4o-mini","messages":[]}'
    async with FakeUpstream() as upstream:
        server = await make_server(UPSTREAM_BASE_URL=upstream.url, **env)
        token, _ = await two_projects(server)
        head = post_head(
            "/v1/chat/completions", token, len(body), Content_Encoding="gzip", Content_Type="application/json"
        )
        status, answer = await raw_exchange(server.port, head, body)
    if inspected:
        assert status == 400, answer
        assert b'"invalid_request_body"' in answer
        assert upstream.requests == []
    else:
        assert status == 200, answer
        assert upstream.requests[0].body == body
    assert "Traceback" not in server.log()


async def test_a_management_body_labelled_gzip_that_is_not_gzip_is_a_400(make_server):
    server = await make_server()
    body = b'{"name":"p","api_key":"sk-x"}'
    head = post_head("/manage/projects", MANAGEMENT_TOKEN, len(body), Content_Encoding="gzip",
                     Content_Type="application/json")  # fmt: skip
    status, answer = await raw_exchange(server.port, head, body)
    assert status == 400, answer
    assert b'"invalid_request_body"' in answer
    assert "Traceback" not in server.log()


async def test_a_gzip_management_body_is_understood(make_server):
    server = await make_server()
    body = gzip.compress(b'{"name":"zipped","api_key":"sk-zipped-key-0123"}', mtime=0)
    head = post_head("/manage/projects", MANAGEMENT_TOKEN, len(body), Content_Encoding="gzip",
                     Content_Type="application/json")  # fmt: skip
    status, answer = await raw_exchange(server.port, head, body)
    assert status == 201, answer
    assert b'"zipped"' in answer
