"""The upstream transports against raw loopback servers: bytes on the wire, framing, keep-alive,
limits, TLS.

A contract suite: each behaviour the proxy relies on runs against the pool and against the plain
``aiohttp.ClientSession`` reference (``make_transport``), so a divergence shows; tests of the pool's
own rules (messages, idle pruning, retries, read pause) take ``UpstreamPool`` alone and say why.
Each server here is a scripted asyncio stream server, so what a transport sends is seen byte for
byte and every way an upstream can answer (or fail to) can be played.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import ipaddress
import socket
import ssl
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, aclosing
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from llmproxy.config import ApiConfig, Timeouts
from llmproxy.proxy.pool import UpstreamPool
from llmproxy.proxy.transport import SessionTransport, UpstreamAnswer, UpstreamError, UpstreamTransport

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


class RawServer:
    """Runs ``script`` per connection; records every request head (and body) it read."""

    def __init__(self, script: Script, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.received: list[bytes] = []
        self.base = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self._server.sockets[0].getsockname()[1]
        self.base = f"{'https' if self.tls else 'http'}://{'localhost' if self.tls else '127.0.0.1'}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_now -= 1
            self._writers.discard(writer)
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request: its head, and a Content-Length body if it has one."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + (await reader.readexactly(length) if length else b"")
        self.received.append(request)
        return request


MakeTransport = Callable[..., UpstreamTransport]  # (api, *, ssl_context=None)


@pytest.fixture(params=[UpstreamPool, SessionTransport], ids=["pool", "session"])
def make_transport(request: pytest.FixtureRequest) -> MakeTransport:
    """Every contract test runs twice: on the proxy's pool and on the ClientSession reference."""
    return request.param  # type: ignore[no-any-return]


def upstream_error(
    transport: UpstreamTransport, pool_says: str
) -> AbstractContextManager[pytest.ExceptionInfo[UpstreamError]]:
    """UpstreamError from every transport; the pool's message is its own, so only its is checked."""
    return pytest.raises(UpstreamError, match=pool_says if isinstance(transport, UpstreamPool) else None)


def api(**timeouts: float) -> ApiConfig:
    return msgspec.structs.replace(ApiConfig(), timeouts=Timeouts(**timeouts)) if timeouts else ApiConfig()


async def read_all(response: UpstreamAnswer) -> bytes:
    body = b""
    while chunk := await response.readany():
        body += chunk
    return body


def into(got: list[bytes]) -> Callable[[bytes], bool]:
    """A sink for ``pipe`` that keeps every chunk in ``got`` and is never full."""

    def sink(chunk: bytes) -> bool:
        got.append(chunk)
        return True

    return sink


async def pipe_all(response: UpstreamAnswer, full_every: int = 0) -> bytes:
    """The body through ``pipe``; a sink that says it is full every ``full_every`` chunks (0: never)."""
    got: list[bytes] = []

    def sink(chunk: bytes) -> bool:
        got.append(chunk)
        return not full_every or len(got) % full_every != 0

    while await response.pipe(sink):
        pass
    return b"".join(got)


async def poll_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Until ``condition()`` holds (the loop turning meanwhile), at most ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.01)


async def serving(script_for: Callable[[RawServer], Script]) -> RawServer:
    holder: list[RawServer] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await script_for(holder[0])(reader, writer)

    server = RawServer(script)
    holder.append(server)
    return server


def keep_answering(body_for: Callable[[bytes], bytes] = lambda request: OK) -> Callable[[RawServer], Script]:
    def script_for(server: RawServer) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                request = await server.read_request(reader)
                writer.write(body_for(request))
                await writer.drain()

        return script

    return script_for


def silent(server: RawServer) -> Script:
    """Reads the request and never answers."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await reader.read()

    return script


def answer_once(*pieces: bytes, abort: bool = False) -> Callable[[RawServer], Script]:
    """Per connection: read one request, send ``pieces`` one write each, then close (or reset) it."""

    def script_for(server: RawServer) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
            if abort:
                writer.transport.abort()
            else:
                writer.close()

        return script

    return script_for


def dropping_the_second_request(answer: bytes = b"") -> Callable[[RawServer], Script]:
    """Answers the first request on a connection, then reads the next and drops the connection after
    sending ``answer`` (a partial one, or nothing)."""

    def script_for(server: RawServer) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(OK)
            await writer.drain()
            await server.read_request(reader)
            writer.write(answer)
            await writer.drain()
            writer.transport.abort()

        return script

    return script_for


async def test_the_request_goes_out_exactly_as_framed_and_the_answer_comes_back_whole(
    make_transport: MakeTransport,
) -> None:
    async with await serving(keep_answering()) as server:
        async with aclosing(make_transport(api())) as transport:
            response = await transport.request(
                "POST",
                server.base + "/prefix",
                "/v1/chat/completions?a=1%202",
                [("Content-Type", "application/json"), ("Authorization", "Bearer sk-x")],
                b'{"model":"m"}',
            )
            assert (response.status, response.reason) == (200, "OK")
            assert list(response.headers.items()) == [
                ("Content-Type", "application/json"),
                ("Content-Length", "11"),
            ]
            assert await read_all(response) == b'{"ok":true}' and response.is_eof()
            response.release()
    port = server.base.rsplit(":", 1)[1]
    assert server.received == [
        b"POST /prefix/v1/chat/completions?a=1%202 HTTP/1.1\r\n"
        b"Host: 127.0.0.1:" + port.encode() + b"\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer sk-x\r\nContent-Length: 13\r\n\r\n"
        b'{"model":"m"}'
    ]


# pool only: aiohttp gives the connection back once the answer is in, so a later close() keeps it
async def test_a_released_connection_is_reused_and_a_closed_one_is_not() -> None:
    async with await serving(keep_answering()) as server:
        async with aclosing(UpstreamPool(api())) as pool:
            for _ in range(3):
                response = await pool.request("GET", server.base, "/v1/models", [])
                await read_all(response)
                response.release()
            assert server.connections == 1
            response = await pool.request("GET", server.base, "/v1/models", [])
            response.close()
            response = await pool.request("GET", server.base, "/v1/models", [])
            await read_all(response)
            response.release()
            assert server.connections == 2
    assert server.received[0] == f"GET /v1/models HTTP/1.1\r\nHost: {server.base[7:]}\r\n\r\n".encode()


async def test_a_released_connection_is_reused_and_one_closed_mid_answer_is_not(
    make_transport: MakeTransport,
) -> None:
    part = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart"  # the rest never comes
    async with await serving(keep_answering(lambda request: part if b"/slow" in request else OK)) as server:
        async with aclosing(make_transport(api())) as transport:
            for _ in range(2):
                response = await transport.request("GET", server.base, "/v1/models", [])
                await read_all(response)
                response.release()
            assert server.connections == 1
            response = await transport.request("GET", server.base, "/v1/slow", [])
            assert await response.readany() == b"part"
            response.close()
            response = await transport.request("GET", server.base, "/v1/models", [])
            assert await read_all(response) == b'{"ok":true}'
            response.release()
            assert server.connections == 2


async def test_a_post_without_a_body_says_content_length_0(make_transport: MakeTransport) -> None:
    async with await serving(keep_answering()) as server:
        async with aclosing(make_transport(api())) as transport:
            response = await transport.request("POST", server.base, "/v1/files", [])
            await read_all(response)
            response.release()
    assert server.received[0].endswith(b"\r\nContent-Length: 0\r\n\r\n")


def two_chunks(release_second: asyncio.Event) -> Callable[[RawServer], Script]:
    """A chunked event stream: "data: " at once, "1\\n\\n" and the final chunk once ``release_second`` is
    set; the connection kept open (the end is the final chunk, not a close)."""

    def script_for(server: RawServer) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            writer.write(b"6\r\ndata: \r\n")
            await writer.drain()
            await release_second.wait()
            writer.write(b"3\r\n1\n\n\r\n0\r\n\r\n")
            await writer.drain()
            await reader.read()

        return script

    return script_for


async def test_a_chunked_answer_is_read_chunk_by_chunk_as_it_arrives(make_transport: MakeTransport) -> None:
    release_second = asyncio.Event()
    async with await serving(two_chunks(release_second)) as server:
        async with aclosing(make_transport(api())) as transport:
            response = await transport.request("POST", server.base, "/v1/chat/completions", [], b"{}")
            assert await response.readany() == b"data: "
            assert not response.is_eof()
            release_second.set()
            assert await response.readany() == b"1\n\n"
            assert await response.readany() == b""
            assert response.headers["Transfer-Encoding"] == "chunked"
            response.release()


@pytest.mark.parametrize("reading", ["readany", "pipe"])
async def test_an_answer_closed_while_its_reader_waits_fails_the_wait_rather_than_hang_it(
    make_transport: MakeTransport, reading: str
) -> None:
    """Whoever closes an answer (today only its reader's own task does), a wait on it ends: with an
    UpstreamError, never a future left pending for ever."""
    release_second = asyncio.Event()
    async with await serving(two_chunks(release_second)) as server:
        async with aclosing(make_transport(api())) as transport:
            response = await transport.request("POST", server.base, "/v1/chat/completions", [], b"{}")
            assert await response.readany() == b"data: "
            got: list[bytes] = []
            waiting = asyncio.ensure_future(
                response.pipe(into(got)) if reading == "pipe" else response.readany()
            )
            await asyncio.sleep(0.05)
            assert not waiting.done()
            response.close()
            with pytest.raises(UpstreamError):
                await asyncio.wait_for(waiting, 2.0)
            release_second.set()


async def test_pipe_hands_each_chunk_to_the_sink_as_it_arrives_and_says_false_at_the_end(
    make_transport: MakeTransport,
) -> None:
    release_second = asyncio.Event()
    async with await serving(two_chunks(release_second)) as server:
        async with aclosing(make_transport(api())) as transport:
            response = await transport.request("POST", server.base, "/v1/chat/completions", [], b"{}")
            got: list[bytes] = []
            piping = asyncio.ensure_future(response.pipe(into(got)))
            await poll_until(lambda: bool(got))
            assert got == [b"data: "] and not piping.done()  # handed over while the upstream still sends
            release_second.set()
            assert await piping is False
            assert got == [b"data: ", b"1\n\n"] and response.is_eof()
            response.release()


async def test_pipe_stops_when_the_sink_is_full_and_goes_on_where_it_stopped(
    make_transport: MakeTransport,
) -> None:
    """A sink that is full every third chunk: pipe returns True each time, and piping again hands over what
    arrived meanwhile; 4 MiB arrive intact (the pool pauses the socket while it buffers past its mark)."""
    payload = bytes(range(256)) * (16 * 1024)
    body = b"".join(b"%x\r\n%b\r\n" % (16384, payload[i : i + 16384]) for i in range(0, len(payload), 16384))
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"
    async with await serving(keep_answering(lambda request: answer)) as server:
        async with aclosing(make_transport(api())) as transport:
            response = await transport.request("GET", server.base, "/v1/files/f/content", [])
            assert await pipe_all(response, full_every=3) == payload
            response.release()


@pytest.mark.parametrize(
    ("script_for", "body"),
    [  # no length: the body ends where the upstream closes; or a length, Connection: close, socket kept open
        (answer_once(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the ", b"end"), b"until the end"),
        (
            keep_answering(
                lambda request: b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
            ),
            b"ok",
        ),
    ],
    ids=["without-length", "connection-close"],
)
async def test_an_answer_that_ends_its_connection_is_read_whole_and_the_connection_not_reused(
    make_transport: MakeTransport, script_for: Callable[[RawServer], Script], body: bytes
) -> None:
    async with await serving(script_for) as server:
        async with aclosing(make_transport(api())) as transport:
            for _ in range(2):
                response = await transport.request("GET", server.base, "/v1/models", [])
                assert await read_all(response) == body
                response.release()
    assert server.connections == 2


@pytest.mark.parametrize("reading", ["readany", "pipe"])
async def test_a_cut_short_body_is_an_upstream_error_not_a_short_success(
    make_transport: MakeTransport, reading: str
) -> None:
    """Either way of reading: the bytes that came, then UpstreamError (pipe hands them over first)."""
    async with await serving(
        answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
    ) as server:
        async with aclosing(make_transport(api())) as transport:
            response = await transport.request("GET", server.base, "/v1/models", [])
            got: list[bytes] = []
            if reading == "readany":
                got.append(await response.readany())
            with upstream_error(transport, "closed the connection"):
                await (response.pipe(into(got)) if reading == "pipe" else response.readany())
            assert b"".join(got) == b"only part"
            response.close()


async def test_a_streamed_body_goes_chunked_without_a_length_and_raw_with_one(
    make_transport: MakeTransport,
) -> None:
    def script_for(server: RawServer) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if b"Transfer-Encoding: chunked" in head:
                    body = await reader.readuntil(b"0\r\n\r\n")
                else:
                    body = await reader.readexactly(6)
                server.received.append(head + body)
                writer.write(OK)
                await writer.drain()

        return script

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"abc", b"", b"def"):
            await asyncio.sleep(0)
            yield part

    async with await serving(script_for) as server:
        async with aclosing(make_transport(api())) as transport:
            for headers in ([], [("Content-Length", "6")]):
                response = await transport.request("PUT", server.base, "/v1/files", headers, parts())
                assert await read_all(response) == b'{"ok":true}'
                response.release()
    assert server.received[0].endswith(b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
    assert server.received[1].endswith(b"\r\nContent-Length: 6\r\n\r\nabcdef")
    assert b"Transfer-Encoding" not in server.received[1]


async def test_a_streamed_body_that_fails_fails_the_exchange(make_transport: MakeTransport) -> None:
    def script_for(server: RawServer) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()

        return script

    async def broken() -> AsyncIterator[bytes]:
        yield b"abc"
        raise ValueError("request body too large")

    async with await serving(script_for) as server:
        async with aclosing(make_transport(api())) as transport:
            with pytest.raises(UpstreamError, match="request body too large"):
                await transport.request("POST", server.base, "/v1/files", [], broken())


def reading_every_byte(server: RawServer) -> Script:
    """Answers each Content-Length request, and records whatever else arrives on the connection."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await server.read_request(reader)
                writer.write(OK)
                await writer.drain()
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                server.received.append(exc.partial)

    return script


@pytest.mark.parametrize(
    "pieces",
    [(b"abc", b"defEXTRA"), (b"abcdefEXTRA",), (b"abc",)],
    ids=["longer", "longer-at-once", "shorter"],
)
async def test_a_streamed_body_that_does_not_match_its_content_length_fails_and_its_connection_is_closed(
    make_transport: MakeTransport,
    pieces: tuple[bytes, ...],
) -> None:
    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            await asyncio.sleep(0)
            yield piece

    async with await serving(reading_every_byte) as server:
        async with aclosing(make_transport(api(response_header=1.0))) as transport:
            with pytest.raises(UpstreamError, match="Content-Length"):
                response = await transport.request(
                    "POST", server.base, "/v1/files", [("Content-Length", "6")], body()
                )
                response.release()
            again = await transport.request("POST", server.base, "/v1/files", [], b"next")
            assert await read_all(again) == b'{"ok":true}'
            again.release()
    assert server.connections == 2  # the connection of the failed exchange was not reused
    assert not any(b"EXTRA" in request for request in server.received)  # no byte past the framing left
    assert server.received[-1].endswith(b"\r\n\r\nnext")


async def test_a_streamed_body_with_an_unusable_content_length_is_not_sent(
    make_transport: MakeTransport,
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"abcdef"

    async with await serving(keep_answering()) as server:
        async with aclosing(make_transport(api())) as transport:
            for declared in ([("Content-Length", "6"), ("Content-Length", "6")], [("Content-Length", "+6")]):
                with pytest.raises(UpstreamError, match="unusable Content-Length"):
                    await transport.request("POST", server.base, "/v1/files", declared, body())
    assert server.connections == 0


async def test_a_status_over_599_is_an_upstream_error_not_relayed(make_transport: MakeTransport) -> None:
    weird = b"HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\n{}"
    async with await serving(keep_answering(lambda request: weird)) as server:
        async with aclosing(make_transport(api())) as transport:
            with pytest.raises(UpstreamError, match="invalid status 999"):
                await transport.request("GET", server.base, "/v1/models", [])


# pool only: aiohttp fails a HEAD answered with a body (read as the next answer); the pool drops the bytes
async def test_the_answer_to_head_has_no_body_even_with_a_length() -> None:
    async with await serving(keep_answering()) as server:
        async with aclosing(UpstreamPool(api())) as pool:
            response = await pool.request("HEAD", server.base, "/v1/models", [])
            assert response.headers["Content-Length"] == "11"
            assert await response.readany() == b"" and response.is_eof()
            response.release()


async def test_a_head_answer_is_complete_at_its_headers_whatever_its_length(
    make_transport: MakeTransport,
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"  # what a GET would get, no body
    async with await serving(keep_answering(lambda request: head)) as server:
        async with aclosing(make_transport(api(response_header=5))) as transport:
            response = await transport.request("HEAD", server.base, "/v1/models", [])
            assert response.headers["Content-Length"] == "11"
            assert await response.readany() == b"" and response.is_eof()
            response.release()


async def test_an_interim_100_continue_is_skipped(make_transport: MakeTransport) -> None:
    async with await serving(keep_answering(lambda request: b"HTTP/1.1 100 Continue\r\n\r\n" + OK)) as server:
        async with aclosing(make_transport(api())) as transport:
            response = await transport.request("POST", server.base, "/v1/chat/completions", [], b"{}")
            assert response.status == 200
            assert await read_all(response) == b'{"ok":true}'
            response.release()


async def test_garbage_instead_of_http_is_an_upstream_error(make_transport: MakeTransport) -> None:
    async with await serving(keep_answering(lambda request: b"SSH-2.0-OpenSSH_9.2\r\n\r\n")) as server:
        async with aclosing(make_transport(api())) as transport:
            with upstream_error(transport, "invalid HTTP response"):
                await transport.request("GET", server.base, "/v1/models", [])


async def test_an_upstream_error_does_not_carry_the_request_headers(make_transport: MakeTransport) -> None:
    async with await serving(keep_answering(lambda request: b"SSH-2.0-OpenSSH_9.2\r\n\r\n")) as server:
        async with aclosing(make_transport(api())) as transport:
            with pytest.raises(UpstreamError) as caught:
                await transport.request("GET", server.base, "/v1/models", [("Authorization", "Bearer sk-x")])
    assert "sk-x" not in str(caught.value) + repr(
        caught.value
    )  # the proxy logs it: the key must not be there


async def test_nothing_is_sent_when_a_header_carries_a_line_break(make_transport: MakeTransport) -> None:
    async with await serving(keep_answering()) as server:
        async with aclosing(make_transport(api())) as transport:
            with pytest.raises(UpstreamError, match="CR or LF"):
                await transport.request(
                    "GET", server.base, "/v1/models", [("Authorization", "Bearer a\r\nX-Evil: 1")]
                )
    assert server.connections == 0


async def test_an_unreachable_upstream_is_an_upstream_error(make_transport: MakeTransport) -> None:
    async with await serving(keep_answering()) as server:
        base = server.base
    async with aclosing(make_transport(api())) as transport:
        with upstream_error(transport, "cannot connect"):
            await transport.request("GET", base, "/v1/models", [])


async def test_no_headers_within_the_read_timeout_is_a_timeout(make_transport: MakeTransport) -> None:
    async with await serving(silent) as server:
        async with aclosing(make_transport(api(response_header=0.2))) as transport:
            with pytest.raises(TimeoutError):
                await transport.request("GET", server.base, "/v1/models", [])


async def test_a_body_that_keeps_trickling_is_cut_at_the_request_timeout(
    make_transport: MakeTransport,
) -> None:
    def script_for(server: RawServer) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(100):
                writer.write(b"1\r\n.\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)

        return script

    async with await serving(script_for) as server:
        async with aclosing(make_transport(api(response_header=5, request=0.5))) as transport:
            response = await transport.request("GET", server.base, "/v1/models", [])
            with pytest.raises(TimeoutError):
                await read_all(response)
            response.close()


@pytest.mark.parametrize("reading", ["readany", "pipe"])
async def test_the_read_timeout_bounds_each_gap_between_chunks_not_the_whole_body(
    make_transport: MakeTransport, reading: str
) -> None:
    """Chunks 0.1 s apart for 0.8 s pass a 0.3 s read timeout (each gap counts from the last chunk,
    however the timer behind it is kept); then a 1 s silence is a TimeoutError after the bytes sent."""

    def script_for(server: RawServer) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(8):
                writer.write(b"1\r\n.\r\n")
                await writer.drain()
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            writer.write(b"0\r\n\r\n")

        return script

    async with await serving(script_for) as server:
        async with aclosing(make_transport(api(response_header=0.3, request=10))) as transport:
            response = await transport.request("GET", server.base, "/v1/models", [])
            loop = asyncio.get_running_loop()
            started, got = loop.time(), list[bytes]()
            with pytest.raises(TimeoutError):
                if reading == "pipe":
                    await response.pipe(into(got))
                while chunk := await response.readany():
                    got.append(chunk)
            assert b"".join(got) == b"." * 8
            assert 0.8 <= loop.time() - started < 1.6  # the last chunk at ~0.7 s, then 0.3 s of silence
            response.close()


async def test_a_closed_connection_is_freed_at_once_not_left_to_the_collector() -> None:
    """llhttp's parser holds the connection's bound methods: it is dropped when the connection is lost,
    so a closed connection is freed by reference counting. Left to the collector, each was 15 objects
    that only an old-generation pass (~0.85 s at 10,000 open streams) would free. The collector is off
    here, so a cycle would keep the connection alive."""
    closing = OK.replace(b"Content-Length: 11", b"Connection: close\r\nContent-Length: 11")
    async with await serving(answer_once(closing)) as server:
        async with aclosing(UpstreamPool(api())) as pool:
            gc.disable()
            try:
                response = await pool.request("GET", server.base, "/v1/models", [])
                assert await read_all(response) == b'{"ok":true}'
                connection = weakref.ref(response._conn)
                response.release()  # Connection: close: closed, not kept
                del response
                await poll_until(lambda: connection() is None)
                assert connection() is None
            finally:
                gc.enable()


async def test_an_idle_connection_the_upstream_closed_is_not_used_again(
    make_transport: MakeTransport,
) -> None:
    async with await serving(answer_once(OK)) as server:  # keep-alive announced, then closed right after
        async with aclosing(make_transport(api())) as transport:
            for _ in range(3):
                response = await transport.request("POST", server.base, "/v1/chat/completions", [], b"{}")
                assert await read_all(response) == b'{"ok":true}'
                response.release()
                await asyncio.sleep(0.05)  # the close reaches the transport
            assert server.connections == 3


@pytest.mark.parametrize(
    ("method", "body"),
    [("GET", None), ("OPTIONS", None), ("PUT", b"{}"), ("DELETE", None)],  # HEAD: OK carries a body
)
async def test_an_idempotent_request_on_a_reused_connection_closed_unanswered_is_retried_once_a_post_is_not(
    make_transport: MakeTransport, method: str, body: bytes | None
) -> None:
    async with await serving(dropping_the_second_request()) as server:
        async with aclosing(make_transport(api())) as transport:
            response = await transport.request("GET", server.base, "/v1/models", [])
            await read_all(response)
            response.release()
            response = await transport.request(
                method, server.base, "/v1/models", [], body
            )  # dropped, then retried
            assert await read_all(response) == b'{"ok":true}'
            response.release()
            assert server.connections == 2
            with pytest.raises(UpstreamError):
                await transport.request("POST", server.base, "/v1/chat/completions", [], b"{}")
            assert server.connections == 2


async def test_max_connections_bounds_the_exchanges_in_flight(make_transport: MakeTransport) -> None:
    gate = asyncio.Event()

    def script_for(server: RawServer) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await server.read_request(reader)
                await gate.wait()
                writer.write(OK)
                await writer.drain()

        return script

    async with await serving(script_for) as server:
        transport = make_transport(msgspec.structs.replace(ApiConfig(), max_connections=2))

        async def one() -> bytes:
            response = await transport.request("GET", server.base, "/v1/models", [])
            body = await read_all(response)
            response.release()
            return body

        try:
            tasks = [asyncio.ensure_future(one()) for _ in range(5)]
            async with asyncio.timeout(5):
                while len(server.received) < 2:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            assert len(server.received) == 2  # the other three wait for a slot
            gate.set()
            assert await asyncio.gather(*tasks) == [b'{"ok":true}'] * 5
            assert server.most_open <= 2
        finally:
            await transport.aclose()


# pool only: the read pause is the pool's own flow control (aiohttp has its own, unobservable here)
async def test_a_large_answer_arrives_intact_through_the_read_pause() -> None:
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB, well past the pool's read high-water mark
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload
    async with await serving(keep_answering(lambda request: answer)) as server:
        async with aclosing(UpstreamPool(api())) as pool:
            response = await pool.request("GET", server.base, "/v1/files/f/content", [])
            async with asyncio.timeout(5):  # unread, the answer fills the buffer and the socket is paused
                while not response._conn._reading_paused:
                    await asyncio.sleep(0.01)
            assert await read_all(response) == payload
            response.release()


async def test_a_large_answer_arrives_intact(make_transport: MakeTransport) -> None:
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB: more than either transport buffers unread
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload
    async with await serving(keep_answering(lambda request: answer)) as server:
        async with aclosing(make_transport(api())) as transport:
            response = await transport.request("GET", server.base, "/v1/files/f/content", [])
            assert await read_all(response) == payload
            response.release()


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_https_upstreams_are_verified_and_kept_alive(
    make_transport: MakeTransport, tmp_path: Path
) -> None:
    server_tls, client_tls = self_signed(tmp_path)
    holder: list[RawServer] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await keep_answering()(holder[0])(reader, writer)

    async with RawServer(script, tls=server_tls) as server:
        holder.append(server)
        async with aclosing(make_transport(api(), ssl_context=client_tls)) as transport:
            for _ in range(2):
                response = await transport.request("POST", server.base, "/v1/chat/completions", [], b"{}")
                assert await read_all(response) == b'{"ok":true}'
                response.release()
            assert server.connections == 1
        async with aclosing(
            make_transport(api())
        ) as untrusting:  # the system's CAs: the self-signed certificate is refused
            with pytest.raises(UpstreamError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.request("GET", server.base, "/v1/models", [])
    assert server.received[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:")


async def test_a_connection_idle_past_idle_connection_is_closed_not_reused(
    make_transport: MakeTransport,
) -> None:
    async with await serving(keep_answering()) as server:
        async with aclosing(make_transport(api(idle_connection=0.05))) as transport:
            for pause in (0.0, 0.2):
                await asyncio.sleep(pause)
                response = await transport.request("GET", server.base, "/v1/models", [])
                await read_all(response)
                response.release()
            assert server.connections == 2


# pool only: pruning the oldest on reuse is the pool's rule; aiohttp prunes on a timer of its own
async def test_connections_idle_past_idle_connection_are_closed_even_when_newer_ones_are_reused() -> None:
    async with await serving(keep_answering()) as server:
        async with aclosing(UpstreamPool(api(idle_connection=0.5))) as pool:
            first = await asyncio.gather(*(pool.request("GET", server.base, "/v1/models", []) for _ in "ab"))
            for response in first:
                await read_all(response)
                response.release()
            for _ in range(2):  # each time the newest idle connection is reused; the other only waits
                await asyncio.sleep(0.3)
                response = await pool.request("GET", server.base, "/v1/models", [])
                await read_all(response)
                response.release()
            await asyncio.sleep(0.05)  # the close reaches the server
            assert (server.connections, server.open_now) == (2, 1)


async def test_a_streamed_get_is_not_retried_it_cannot_be_replayed(make_transport: MakeTransport) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"{}"

    async with await serving(dropping_the_second_request()) as server:
        async with aclosing(make_transport(api())) as transport:
            response = await transport.request("GET", server.base, "/v1/models", [])
            await read_all(response)
            response.release()
            with pytest.raises(UpstreamError):
                await transport.request("GET", server.base, "/v1/models", [("Content-Length", "2")], body())
            assert server.connections == 1


# pool only: aiohttp retries an idempotent request once after any drop, even one partly answered
async def test_a_get_answered_in_part_before_the_drop_is_not_retried() -> None:
    async with await serving(dropping_the_second_request(b"HTTP/1.1 2")) as server:
        async with aclosing(UpstreamPool(api())) as pool:
            response = await pool.request("GET", server.base, "/v1/models", [])
            await read_all(response)
            response.release()
            with pytest.raises(UpstreamError):
                await pool.request("GET", server.base, "/v1/models", [])
            assert server.connections == 1


# pool only: aiohttp retries an idempotent request once after any drop, even on a new connection
async def test_a_get_dropped_on_a_new_connection_is_not_retried() -> None:
    async with await serving(answer_once(abort=True)) as server:
        async with aclosing(UpstreamPool(api())) as pool:
            with pytest.raises(UpstreamError):
                await pool.request("GET", server.base, "/v1/models", [])
            assert server.connections == 1


async def test_a_connect_that_hangs_is_cut_at_the_connect_timeout(make_transport: MakeTransport) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepted: once its queue is full, the kernel drops further SYNs
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        async with aclosing(make_transport(api(connect=0.3))) as transport:
            with pytest.raises(TimeoutError):
                await transport.request("GET", f"http://127.0.0.1:{port}", "/v1/models", [])
    finally:
        for sock in (*fillers, listener):
            sock.close()


async def test_a_slow_upload_is_bounded_by_the_request_timeout_not_the_read_timeout(
    make_transport: MakeTransport,
) -> None:
    async def slowly() -> AsyncIterator[bytes]:
        for part in (b"ab", b"cd", b"ef"):
            await asyncio.sleep(0.2)  # 0.6 s in all, past the 0.3 s read timeout
            yield part

    async with await serving(keep_answering()) as server:  # the whole body first (Content-Length: 6)
        async with aclosing(make_transport(api(response_header=0.3, request=5))) as transport:
            response = await transport.request(
                "PUT", server.base, "/v1/files", [("Content-Length", "6")], slowly()
            )
            assert await read_all(response) == b'{"ok":true}'
            response.release()
    assert server.received[0].endswith(b"\r\n\r\nabcdef")


async def test_waiting_for_a_free_slot_is_bounded_by_the_connect_timeout(
    make_transport: MakeTransport,
) -> None:
    async with await serving(silent) as server:
        limited = msgspec.structs.replace(api(connect=0.2, request=30), max_connections=1)
        async with aclosing(make_transport(limited)) as transport:
            holder = asyncio.ensure_future(transport.request("GET", server.base, "/v1/models", []))
            async with asyncio.timeout(5):
                while not server.received:
                    await asyncio.sleep(0.01)
            started = asyncio.get_running_loop().time()
            with pytest.raises(TimeoutError):
                await transport.request("GET", server.base, "/v1/models", [])
            assert asyncio.get_running_loop().time() - started < 5  # the connect timeout, not the request's
            holder.cancel()


async def test_a_failed_exchange_gives_its_slot_back(make_transport: MakeTransport) -> None:
    answers = iter([b"SSH-2.0-OpenSSH_9.2\r\n\r\n", OK])
    async with await serving(keep_answering(lambda request: next(answers))) as server:
        limited = msgspec.structs.replace(api(connect=0.5), max_connections=1)
        async with aclosing(make_transport(limited)) as transport:
            with pytest.raises(UpstreamError):
                await transport.request("GET", server.base, "/v1/models", [])
            response = await transport.request(
                "GET", server.base, "/v1/models", []
            )  # would wait 0.5 s, then fail
            assert await read_all(response) == b'{"ok":true}'
            response.release()


async def test_max_connections_per_host_holds_each_origin_apart(make_transport: MakeTransport) -> None:
    async with await serving(silent) as busy, await serving(keep_answering()) as other:
        limited = msgspec.structs.replace(api(connect=0.2), max_connections_per_host=1)
        async with aclosing(make_transport(limited)) as transport:
            holder = asyncio.ensure_future(transport.request("GET", busy.base, "/v1/models", []))
            async with asyncio.timeout(5):
                while not busy.received:
                    await asyncio.sleep(0.01)
            with pytest.raises(TimeoutError):
                await transport.request("GET", busy.base, "/v1/models", [])
            response = await transport.request(
                "GET", other.base, "/v1/models", []
            )  # another origin: a free slot
            assert await read_all(response) == b'{"ok":true}'
            response.release()
            holder.cancel()


async def test_switching_protocols_is_an_upstream_error(make_transport: MakeTransport) -> None:
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    async with await serving(keep_answering(lambda request: upgrade)) as server:
        async with aclosing(make_transport(api())) as transport:
            with pytest.raises(UpstreamError, match="101"):
                await transport.request("GET", server.base, "/v1/models", [])
