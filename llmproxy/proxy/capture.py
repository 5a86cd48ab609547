"""Bounded body capture: what observers and the cache keep of the bodies that pass through the proxy.

Bodies are captured up to a bound while they stream past, so observing never holds more than a
fixed amount per request and never changes what is proxied. A response past the bound also keeps its
last few KiB, where the upstream reports usage (the final SSE usage chunk, a JSON body's last fields).
"""

from __future__ import annotations

import zlib

from llmproxy.codings import zlib_wbits

__all__ = ("INFLATE_CAP", "TAIL_BYTES", "BodyCapture", "bounded", "inflated_tail")

# The tail kept of a response past the capture bound. Usage is in its last bytes: chat streams end with
# the usage chunk and [DONE]; a Responses API object ends with usage, user and metadata (16 pairs of at
# most 64 + 512 characters).
TAIL_BYTES = 16 * 1024
# Decoded bytes read to find the tail of a compressed response that fitted the bound compressed (a few
# MiB for a real answer); past this the body is a bomb, not an answer, and is not read further.
INFLATE_CAP = 64 * 1024 * 1024
_INFLATE_STEP = 1024 * 1024


class BodyCapture:
    """The first ``limit`` bytes of a body fed in chunks; remembers whether more went past.

    With ``tail``, a body past the bound also keeps its last ``tail`` bytes (and at most twice that
    more): the chunks themselves, the oldest dropped now and then, only an oversized chunk sliced.
    """

    __slots__ = ("_chunks", "_room", "truncated", "_tail", "_tail_size", "_tail_limit", "_tail_trim")

    def __init__(self, limit: int, *, tail: int = 0) -> None:
        self._chunks: list[bytes] = []  # the chunks themselves (immutable): no copy until value()
        self._room = limit
        self.truncated = False
        self._tail_limit = tail
        self._tail_trim = 3 * tail  # kept before the unneeded oldest chunks are dropped
        self._tail: list[bytes] | None = None  # once past the bound (and keeping a tail)
        self._tail_size = 0

    def feed(self, chunk: bytes) -> None:
        if len(chunk) <= self._room:
            self._chunks.append(chunk)
            self._room -= len(chunk)
        elif (tail := self._tail) is not None:  # past the bound: a list append, mostly
            size = len(chunk)
            if size > self._tail_limit:
                size = self._tail_limit
                chunk = chunk[-size:]
            tail.append(chunk)
            self._tail_size += size
            if self._tail_size > self._tail_trim:
                self._trim()
        else:
            room = self._room
            if room > 0:
                self._chunks.append(chunk[:room])
                self._room = 0
            self.truncated = True
            if self._tail_limit > 0:  # the tail starts where the head ends
                self._tail = []
                self.feed(chunk[max(room, len(chunk) - self._tail_limit) :])

    def _trim(self) -> None:
        """Drop the oldest chunks that the newer ones make unneeded for the last ``tail`` bytes."""
        tail, size, drop = self._tail, self._tail_size, 0
        assert tail is not None
        while size - len(tail[drop]) >= self._tail_limit:
            size -= len(tail[drop])
            drop += 1
        del tail[:drop]
        self._tail_size = size

    def value(self) -> bytes:
        chunks = self._chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def tail(self) -> bytes:
        """The body's last ``tail`` bytes if it went past the bound, else b"" (the head has it all)."""
        if not self._tail:
            return b""
        kept = b"".join(self._tail)
        missing = self._tail_limit - len(kept)
        if missing <= 0:
            return kept[-self._tail_limit :]
        before: list[bytes] = []  # nothing was dropped yet: the head's end comes right before the tail
        for chunk in reversed(self._chunks):
            before.append(chunk[-missing:])
            missing -= len(before[-1])
            if missing <= 0:
                break
        return b"".join(reversed(before)) + kept


def bounded(body: bytes, limit: int) -> tuple[bytes, bool]:
    """A body already held in full, cut to ``limit``: (captured bytes, truncated)."""
    if len(body) <= limit:
        return body, False
    return body[:limit], True


def inflated_tail(body: bytes, coding: str, size: int, *, cap: int = INFLATE_CAP) -> bytes:
    """The last ``size`` bytes of a gzip or deflate ``body`` once decoded, decoding at most ``cap`` bytes.

    b"" for another coding, corrupt data, or a body decoding past ``cap``. CPU-bound: run off the loop.
    """
    wbits = zlib_wbits(coding, body)
    if wbits is None:
        return b""
    decoder = zlib.decompressobj(wbits)
    tail, total, data = b"", 0, body
    try:
        while True:
            out = decoder.decompress(data, _INFLATE_STEP)
            total += len(out)
            if total > cap:
                return b""
            tail = (tail + out)[-size:]
            data = decoder.unconsumed_tail
            if not data and len(out) < _INFLATE_STEP:
                break
        out = decoder.flush()
    except zlib.error:
        return b""
    return (tail + out)[-size:] if total + len(out) <= cap else b""
