"""The client and upstream sides of tests/e2e/test_hostile_input.py: a ``Case`` sent over a raw socket,
its answers parsed back, and the fake upstream's scripted 200s.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from aiohttp import web

from tests.e2e.hostile_cases import Case
from tests.fakes.upstream import json_reply, sse_chunks, sse_reply

__all__ = ("Outcome", "fuzz_reply", "parse_answers", "run_case")

READ_TIMEOUT = 8.0  # every timeout of the server under test is 1 s: an answer or a close comes long before


@dataclass
class Outcome:
    """What came back: each answer's (status, body); status -1 marks an unparsable answer."""

    answers: list[tuple[int, bytes]] = field(default_factory=list)
    hung: bool = False  # neither answered nor closed within READ_TIMEOUT


# --- the fake upstream's answers ----------------------------------------------------------------


async def fuzz_reply(request: web.Request) -> web.StreamResponse:
    """Always a 200, shaped by the X-Fuzz-Reply header the case forwarded: delayed, SSE (dripping), gzip or
    JSON."""
    mode = request.headers.get("X-Fuzz-Reply", "")
    if mode == "delay":
        await asyncio.sleep(0.3)
    if mode in ("sse", "drip"):
        frames = sse_chunks(*("token " for _ in range(8 if mode == "drip" else 3)))
        gates = [_Delay(0.05) for _ in frames] if mode == "drip" else ()
        return await sse_reply(frames, gates=gates)(request)
    return await json_reply(gzipped=mode == "gzip")(request)


class _Delay(asyncio.Event):
    """A gate of ``sse_reply`` that opens once it has been waited on for ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def wait(self) -> bool:
        await asyncio.sleep(self.delay)
        return True


# --- the client side ------------------------------------------------------------------------------


async def run_case(port: int, case: Case) -> Outcome:
    """Send ``case`` on a fresh connection; read every answer until the server closes (or vanish)."""
    outcome = Outcome()
    # from one of 250 loopback addresses: the per-address sign-in throttle would lock a single one out at
    # once, and then answer 429 before reading anything a locked-out client sends
    source = f"127.0.1.{1 + case.index % 250}"
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        try:
            for pause, piece in case.pieces:
                if pause:
                    await asyncio.sleep(pause)
                writer.write(piece)
                await writer.drain()
        except ConnectionError:
            pass  # refused early and closed: what the server answered is still to be read
        if case.vanish_after is not None:
            await asyncio.sleep(case.vanish_after)
            return outcome
        data = bytearray()
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                while chunk := await reader.read(65536):
                    data += chunk
        except TimeoutError:
            outcome.hung = True
        except ConnectionError:
            pass
        outcome.answers = parse_answers(bytes(data), case.head_request)
    finally:
        if case.reset:
            writer.transport.abort()
        else:
            writer.close()
    return outcome


# aiohttp answers in the request's version, whatever it was ("HTTP/2.0 401 …" to a request line in HTTP/2.0)
_STATUS_LINE = re.compile(rb"HTTP/\d\.\d (\d{3})[ \r]")


def parse_answers(data: bytes, head_request: bool) -> list[tuple[int, bytes]]:
    """Every HTTP/1.1 response in ``data`` as (status, body); (-1, bytes) where one does not parse."""
    answers: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        match = _STATUS_LINE.match(data, pos)
        if end < 0 or match is None:
            answers.append((-1, data[pos : pos + 300]))
            break
        status = int(match[1])
        fields = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(b":") for line in data[pos:end].split(b"\r\n")[1:])
        )
        pos = end + 4
        if 100 <= status < 200:
            if status == 101:
                answers.append((status, b""))
                break
            continue
        if head_request and _STATUS_LINE.match(data, pos) is None and status >= 400:
            # the edge's 400 to a malformed HEAD has a body (then it closes)
            body, pos = data[pos:], len(data)
        elif head_request or status in (204, 304):
            body = b""
        elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            body, pos = _dechunk(data, pos)
        elif b"content-length" in fields:
            length = int(fields[b"content-length"])
            body, pos = data[pos : pos + length], pos + length
        else:
            body, pos = data[pos:], len(data)
        answers.append((status, body))
    return answers


def _dechunk(data: bytes, pos: int) -> tuple[bytes, int]:
    parts = []
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return b"".join(parts), len(data)
        size = int(data[pos:line_end].split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", line_end)
            return b"".join(parts), (trailer_end + 4 if trailer_end >= 0 else len(data))
        parts.append(data[pos : pos + size])
        pos += size + 2
