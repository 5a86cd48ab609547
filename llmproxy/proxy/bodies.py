"""A client's request body: read whole and bounded, decoded for inspection, or streamed through.

Bounds are the policy's ``max_body_bytes``, before and after decoding: a decompression bomb never
inflates past it. A body streamed upstream reports a stalled, vanished or oversized client as the
flow's outcome, so the exchange that fails with it is refused for the right reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import ClientError, StreamReader
from multidict import CIMultiDictProxy

from llmproxy.codings import DecodedTooLarge, Undecodable, decode
from llmproxy.errors import ClientBodyTimeout, Outcome, ProxyError, Refusal
from llmproxy.proxy.flow import Flow
from llmproxy.proxy.policy import Policy

__all__ = ("decoded", "read_whole", "streamed")


async def read_whole(content: StreamReader, policy: Policy) -> bytes:
    """The whole request body, refused with 413 past ``max_body_bytes`` (chunked bodies too)."""
    limit = policy.max_body_bytes
    chunks: list[bytes] = []
    total = 0
    try:
        while chunk := await content.readany():
            total += len(chunk)
            if total > limit:
                raise policy.too_large()
            chunks.append(chunk)
    except (ConnectionError, ClientError, asyncio.IncompleteReadError):
        raise ProxyError(Refusal.BAD_REQUEST, "Request body incomplete") from None
    except ClientBodyTimeout:
        raise ProxyError(Refusal.REQUEST_TIMEOUT) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def decoded(body: bytes, headers: CIMultiDictProxy[str], policy: Policy) -> bytes:
    """A copy of ``body`` with its Content-Encoding undone, bounded by ``max_body_bytes``: 413 past it,
    400 ``invalid_request_body`` if it does not decode."""
    if "Content-Encoding" not in headers:
        return body
    try:
        return decode(body, ", ".join(headers.getall("Content-Encoding")), policy.max_body_bytes)
    except DecodedTooLarge:
        raise policy.too_large() from None
    except Undecodable as exc:
        raise ProxyError(Refusal.INVALID_REQUEST_BODY, f"Request body does not decode: {exc}") from None


async def streamed(content: StreamReader, policy: Policy, flow: Flow) -> AsyncIterator[bytes]:
    """The request body passed on as it arrives, counted against ``max_body_bytes`` and captured into
    ``flow.request_capture`` (when set)."""
    limit = policy.max_body_bytes
    capture = flow.request_capture
    total = 0
    while True:
        try:
            chunk = await content.readany()
        except ClientBodyTimeout:
            flow.outcome = Outcome.CLIENT_TIMEOUT
            raise
        except asyncio.CancelledError:  # the exchange ended (its connection closed): not the client
            raise
        except BaseException:
            flow.outcome = Outcome.CLIENT_GONE
            raise
        if not chunk:
            return
        total += len(chunk)
        if total > limit:
            flow.outcome = Outcome.BODY_TOO_LARGE
            raise ValueError("request body too large")
        if capture is not None:
            capture.feed(chunk)
        yield chunk
