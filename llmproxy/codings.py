"""Content-Encoding undone on a copy of a body, never past a bound: decompression bombs stay small.

The proxy forwards bodies as received; only where it must read one (the param whitelist, the cache
key, the management API, the event's capture) does it decode a copy, here.
"""

from __future__ import annotations

import zlib

try:  # optional: br is decoded only where a Brotli binding that can bound its output is installed
    import brotli
except ImportError:  # pragma: no cover - depends on the environment
    brotli = None

__all__ = ("DecodedTooLarge", "Undecodable", "codings", "decode", "inflate", "zlib_wbits")


class Undecodable(ValueError):
    """The body is not what its Content-Encoding says (or the coding is unknown here)."""


class DecodedTooLarge(ValueError):
    """The decoded body would be larger than the bound."""


def codings(content_encoding: str) -> list[str]:
    """The codings applied, in the order they were applied (``identity`` left out), lower case."""
    return [c for c in (c.strip() for c in content_encoding.lower().split(",")) if c and c != "identity"]


def zlib_wbits(coding: str, body: bytes) -> int | None:
    """zlib's window bits for a coding it can undo (None for any other coding)."""
    if coding in ("gzip", "x-gzip"):
        return 16 + zlib.MAX_WBITS
    if coding == "deflate":  # RFC 9110 says zlib-wrapped; some clients send raw deflate
        zlib_header = len(body) >= 2 and body[0] & 0x0F == 8 and int.from_bytes(body[:2], "big") % 31 == 0
        return zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
    return None


def inflate(body: bytes, coding: str, limit: int, *, partial: bool = False) -> tuple[bytes, bool]:
    """One coding undone: (at most ``limit`` decoded bytes, whether there was more). Gzip members
    that follow each other are all decoded. ``partial``: ``body`` may be cut short (a bounded capture),
    so what decodes of it is the answer. Raises Undecodable."""
    wbits = zlib_wbits(coding, body)
    if wbits is None:
        return _unbrotli(body, limit, partial) if coding == "br" else _unknown(coding)
    out: list[bytes] = []
    room = limit
    rest = body
    while rest:
        if room <= 0:  # (a max_length of 0 would mean "no bound" to zlib)
            return b"".join(out), True
        decoder = zlib.decompressobj(wbits)
        try:
            piece = decoder.decompress(rest, room)
        except zlib.error as exc:
            raise Undecodable(f"not valid {coding} data: {exc}") from None
        out.append(piece)
        room -= len(piece)
        if decoder.unconsumed_tail or (room <= 0 and not decoder.eof):
            return b"".join(out), True
        if not decoder.eof:
            if partial:
                break
            raise Undecodable(f"{coding} data ends early")
        rest = decoder.unused_data if wbits > 16 else b""  # only gzip has members after members
        if rest.strip(b"\x00") == b"":  # trailing padding some writers add
            break
    return b"".join(out), False


def _unbrotli(body: bytes, limit: int, partial: bool) -> tuple[bytes, bool]:
    if brotli is None:
        raise Undecodable("br is not supported here")
    decoder = brotli.Decompressor()
    try:  # brotli >= 1.2 bounds its output; older versions cannot, and are refused rather than trusted
        out = decoder.process(body, output_buffer_limit=limit + 1)
    except TypeError:
        raise Undecodable("br is not supported here") from None
    except brotli.error as exc:
        raise Undecodable(f"not valid br data: {exc}") from None
    if len(out) > limit:
        return out[:limit], True
    if not decoder.is_finished() and not partial:
        raise Undecodable("br data ends early")
    return out, False


def _unknown(coding: str) -> tuple[bytes, bool]:
    raise Undecodable(f"unsupported Content-Encoding {coding[:40]!r}")


def decode(body: bytes, content_encoding: str, limit: int) -> bytes:
    """``body`` with every coding of ``content_encoding`` undone, last applied first. Raises
    DecodedTooLarge past ``limit`` bytes (at any stage), Undecodable if it does not decode."""
    for coding in reversed(codings(content_encoding)):
        body, more = inflate(body, coding, limit)
        if more:
            raise DecodedTooLarge(f"decoded body larger than {limit} bytes")
    return body
