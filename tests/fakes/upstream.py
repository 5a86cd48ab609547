"""A fake OpenAI-compatible upstream on loopback that records every request and answers from a script.

`async with FakeUpstream() as fake:` → `fake.url` is the base URL to configure. Every request is kept
in `fake.requests` (method, raw path, query, headers, body bytes exactly as received). The answer is
the next scripted reply (`fake.script(...)`), else a fixed chat completion. Replies cover what the proxy
must pass through untouched: JSON (optionally gzip-encoded), OpenAI errors, SSE streams released chunk
by chunk by the test, an endless stream that notices when it is aborted, a bulk answer as large as a test
wants, and an answer that never comes.
``fake.dropped`` counts the requests whose connection the proxy closed before their answer was sent.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

__all__ = (
    "CHAT_COMPLETION",
    "SSE_PIECE",
    "Bulk",
    "FakeUpstream",
    "Recorded",
    "Reply",
    "endless_sse",
    "error_reply",
    "hang",
    "json_reply",
    "sse_chunks",
    "sse_reply",
)

Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]

CHAT_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-fake123",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    "system_fingerprint": "fp_fake",
}
OPENAI_HEADERS = {
    "x-request-id": "req_fake_upstream_1",
    "openai-processing-ms": "12",
    "openai-version": "2020-10-01",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
}


class Recorded:
    """One request as the upstream received it."""

    __slots__ = ("method", "raw_path", "path", "query", "headers", "body")

    def __init__(self, method: str, raw_path: str, headers: CIMultiDict[str], body: bytes) -> None:
        self.method = method
        self.raw_path = raw_path  # path and query exactly as on the request line
        self.path, _, self.query = raw_path.partition("?")
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"Recorded({self.method} {self.raw_path}, {len(self.body)} bytes)"


def json_reply(
    body: Any = None,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    gzipped: bool = False,
) -> Reply:
    """A JSON answer (default: the chat completion); ``gzipped`` sends it Content-Encoding: gzip."""
    raw = body if isinstance(body, bytes) else json.dumps(CHAT_COMPLETION if body is None else body).encode()
    all_headers = {"Content-Type": "application/json", **OPENAI_HEADERS, **(headers or {})}
    if gzipped:
        raw = gzip.compress(raw)
        all_headers["Content-Encoding"] = "gzip"

    async def reply(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=raw, headers=all_headers)

    return reply


def error_reply(
    status: int, code: str, message: str, *, type_: str = "invalid_request_error", **headers: str
) -> Reply:
    """An OpenAI error document, e.g. 429 rate_limit_exceeded with retry-after headers."""
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return json_reply(body, status=status, headers={k.replace("_", "-"): v for k, v in headers.items()})


def sse_chunks(*contents: str, usage: bool = True) -> list[bytes]:
    """Chat completion chunks as OpenAI frames them: one ``data: <json>\\n\\n`` per delta, then [DONE]."""
    frames = []
    for i, text in enumerate(contents):
        delta: dict[str, Any] = {"content": text} if i else {"role": "assistant", "content": text}
        chunk = {
            "id": "chatcmpl-fake123",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
        }
        frames.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    if usage:
        last = {
            "id": "chatcmpl-fake123",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": CHAT_COMPLETION["usage"],
        }
        frames.append(b"data: " + json.dumps(last).encode() + b"\n\n")
    frames.append(b"data: [DONE]\n\n")
    return frames


def sse_reply(frames: Sequence[bytes], *, gates: Sequence[asyncio.Event | None] = ()) -> Reply:
    """An event stream; before sending frame ``i`` it waits for ``gates[i]`` when one is given."""

    async def reply(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **OPENAI_HEADERS})
        await resp.prepare(request)
        for i, frame in enumerate(frames):
            gate = gates[i] if i < len(gates) else None
            if gate is not None:
                await gate.wait()
            await resp.write(frame)
        await resp.write_eof()
        return resp

    return reply


class _Endless:
    """A stream that never ends on its own; ``aborted`` is set once the proxy hangs up on it."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.started = asyncio.Event()
        self.aborted = asyncio.Event()
        self.frames_sent = 0

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for _ in range(100_000):  # bounded: ~17 minutes at 10 ms, far beyond any test
                await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n')
                self.frames_sent += 1
                self.started.set()
                await asyncio.sleep(self.interval)
        except (ConnectionError, asyncio.CancelledError):
            self.aborted.set()
            raise
        return resp


def endless_sse(interval: float = 0.01) -> _Endless:
    return _Endless(interval)


class Bulk:
    """``pieces`` copies of ``piece``, written as fast as the proxy takes them: chunked for an event
    stream, with its Content-Length otherwise; ``sent`` counts the bytes the upstream got out."""

    def __init__(self, piece: bytes, pieces: int, content_type: str = "text/event-stream") -> None:
        self.piece, self.pieces, self.content_type = piece, pieces, content_type
        self.sent = 0

    @property
    def size(self) -> int:
        return len(self.piece) * self.pieces

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": self.content_type}
        if self.content_type != "text/event-stream":
            headers["Content-Length"] = str(self.size)
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        for _ in range(self.pieces):
            await resp.write(self.piece)
            self.sent += len(self.piece)
        await resp.write_eof()
        return resp


SSE_PIECE = b"data: " + b"x" * (65536 - 8) + b"\n\n"  # one 64 KiB event, for Bulk


def hang(release: asyncio.Event) -> Reply:
    """Accept the request and answer nothing until ``release`` is set (a timeout for the proxy)."""

    async def reply(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=200, body=b"{}", content_type="application/json")

    return reply


class FakeUpstream:
    """The fake upstream server; see the module docstring."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.peers: list[
            tuple[str, int]
        ] = []  # the (address, port) each request came from: one per connection
        self.url = ""
        self.closing = asyncio.Event()  # set on close: releases every hung reply
        self._script: deque[Reply] = deque()
        self._default: Reply = json_reply()
        self._runner: web.AppRunner | None = None
        self.received = asyncio.Event()  # set whenever a request arrives
        self.dropped = 0  # requests whose connection was closed before their answer was sent

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these, in order; then the default chat completion."""
        self._script.extend(replies)

    def always(self, reply: Reply) -> None:
        """Answer every unscripted request with ``reply``."""
        self._default = reply

    def hang(self) -> Reply:
        return hang(self.closing)

    async def __aenter__(self) -> FakeUpstream:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._handle)
        # auto_decompress off: a request body is recorded exactly as the proxy sent it, Content-Encoding
        # and all (a real OpenAI upstream would have to decode it itself); handler_cancellation: a reply
        # still waiting or writing learns at once that the proxy hung up
        self._runner = web.AppRunner(
            app, shutdown_timeout=1.0, access_log=None, auto_decompress=False, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
            self.requests.append(
                Recorded(request.method, request.raw_path, CIMultiDict(request.headers), body)
            )
            transport = request.transport
            self.peers.append(transport.get_extra_info("peername")[:2] if transport is not None else ("", 0))
            self.received.set()
            reply = self._script.popleft() if self._script else self._default
            return await reply(request)
        except (ConnectionError, asyncio.CancelledError):
            if not self.closing.is_set():
                self.dropped += 1
            raise
