"""Bounded decoding of a body's Content-Encoding: what the whitelist, cache key and /manage read."""

from __future__ import annotations

import gzip
import zlib

import pytest

from llmproxy.codings import DecodedTooLarge, Undecodable, decode, inflate

TEXT = b'{"model":"gpt-4o-mini"}' * 100


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    "coding, body",
    [
        ("gzip", gzip.compress(TEXT)),
        ("x-gzip", gzip.compress(TEXT)),
        ("deflate", zlib.compress(TEXT)),
        ("deflate", raw_deflate(TEXT)),
        ("GZIP", gzip.compress(TEXT)),
        ("identity", TEXT),
        ("", TEXT),
        ("gzip, deflate", zlib.compress(gzip.compress(TEXT))),
        ("identity, gzip", gzip.compress(TEXT)),
    ],
)
def test_each_coding_is_undone(coding: str, body: bytes) -> None:
    assert decode(body, coding, len(TEXT)) == TEXT


def test_gzip_members_in_a_row_are_all_decoded() -> None:
    assert decode(gzip.compress(TEXT) * 3, "gzip", 3 * len(TEXT)) == TEXT * 3


def test_one_byte_over_the_bound_is_too_large_in_any_member() -> None:
    with pytest.raises(DecodedTooLarge):
        decode(gzip.compress(TEXT), "gzip", len(TEXT) - 1)
    with pytest.raises(DecodedTooLarge):
        decode(gzip.compress(TEXT) * 2, "gzip", 2 * len(TEXT) - 1)


def test_a_bomb_is_cut_at_the_bound_without_inflating_it() -> None:
    bomb = gzip.compress(bytes(256 << 20), compresslevel=9)
    out, more = inflate(bomb, "gzip", 1 << 20)
    assert (len(out), more) == (1 << 20, True)


@pytest.mark.parametrize(
    "coding, body",
    [
        ("gzip", b'{"not": "gzip"}'),
        ("gzip", gzip.compress(TEXT)[:-12]),
        ("gzip", gzip.compress(TEXT) + b"garbage after the member"),
        ("deflate", b"\x78\x9c not deflate"),
        ("zstd", TEXT),
        ("compress", TEXT),
    ],
    ids=["not-gzip", "cut-short", "trailing-garbage", "not-deflate", "zstd", "compress"],
)
def test_a_body_that_is_not_what_its_coding_says_is_undecodable(coding: str, body: bytes) -> None:
    with pytest.raises(Undecodable):
        decode(body, coding, 1 << 20)
