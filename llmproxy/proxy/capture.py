"""What the proxy hands to observers once a forwarded request has finished: the Exchange.

Bodies are captured up to a bound while they stream past, so observing never holds more than a
fixed amount per request and never changes what is proxied.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

__all__ = ("BodyCapture", "Exchange", "Observer", "bounded")


class Exchange(msgspec.Struct, kw_only=True):
    """One forwarded request and its response, as seen by the proxy (never a cache hit or refusal)."""

    request_id: str
    token_id: str
    project_id: str
    method: str
    path: str
    query: str
    status: int
    started_at: float  # time.time() at arrival
    duration_ms: float
    ttfb_ms: float | None  # arrival -> upstream response headers
    request_headers: dict[str, str]  # as the client sent them (instrument redacts)
    response_headers: dict[str, str]  # as the upstream sent them
    request_body: bytes
    request_body_truncated: bool
    response_body: bytes  # raw: possibly gzip, exactly as forwarded
    response_body_truncated: bool
    stream: bool  # response was text/event-stream
    error: str | None  # None, "upstream_timeout", "upstream_unavailable", "client_disconnected"


Observer = Callable[[Exchange], None]


class BodyCapture:
    """The first ``limit`` bytes of a body fed in chunks; remembers whether more went past."""

    __slots__ = ("_chunks", "_room", "truncated")

    def __init__(self, limit: int) -> None:
        self._chunks: list[bytes] = []  # the chunks themselves (immutable): no copy until value()
        self._room = limit
        self.truncated = False

    def feed(self, chunk: bytes) -> None:
        if len(chunk) <= self._room:
            self._chunks.append(chunk)
            self._room -= len(chunk)
        else:
            if self._room > 0:
                self._chunks.append(chunk[: self._room])
                self._room = 0
            self.truncated = True

    def value(self) -> bytes:
        chunks = self._chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def bounded(body: bytes, limit: int) -> tuple[bytes, bool]:
    """A body already held in full, cut to ``limit``: (captured bytes, truncated)."""
    if len(body) <= limit:
        return body, False
    return body[:limit], True
