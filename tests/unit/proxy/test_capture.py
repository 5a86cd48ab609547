"""Bounded body capture: observers never hold more than the configured bytes per body."""

from __future__ import annotations

import gzip
import zlib

import pytest

from llmproxy.proxy.capture import INFLATE_CAP, BodyCapture, bounded, inflated_tail


def test_a_body_exactly_at_the_bound_is_whole() -> None:
    capture = BodyCapture(6)
    for chunk in (b"ab", b"cd", b"ef"):
        capture.feed(chunk)
    assert (capture.value(), capture.truncated) == (b"abcdef", False)


def test_a_body_one_byte_over_the_bound_is_cut_and_flagged() -> None:
    capture = BodyCapture(6)
    for chunk in (b"abcd", b"efg"):
        capture.feed(chunk)
    assert (capture.value(), capture.truncated) == (b"abcdef", True)


def test_chunks_after_the_bound_are_ignored() -> None:
    capture = BodyCapture(2)
    for chunk in (b"ab", b"c", b"d"):
        capture.feed(chunk)
    assert (capture.value(), capture.truncated) == (b"ab", True)


def test_a_zero_bound_captures_nothing_but_notices_the_body() -> None:
    capture = BodyCapture(0)
    capture.feed(b"x")
    assert (capture.value(), capture.truncated) == (b"", True)


def test_a_whole_body_is_cut_to_the_bound() -> None:
    assert bounded(b"abcdef", 6) == (b"abcdef", False)
    assert bounded(b"abcdefg", 6) == (b"abcdef", True)
    assert bounded(b"", 0) == (b"", False)


# --- the tail kept past the bound (where an upstream's usage is) -----------------------------------


def fed(limit: int, tail: int, chunks: list[bytes]) -> BodyCapture:
    capture = BodyCapture(limit, tail=tail)
    for chunk in chunks:
        capture.feed(chunk)
    return capture


def test_a_body_within_the_bound_has_no_tail() -> None:
    assert fed(6, 4, [b"ab", b"cd"]).tail() == b""


def test_the_tail_is_the_last_bytes_of_a_body_past_the_bound_whatever_the_chunking() -> None:
    body = bytes(range(256)) * 40
    for size in (1, 3, 7, 64, 500, 4096, len(body)):
        chunks = [body[i : i + size] for i in range(0, len(body), size)]
        capture = fed(1000, 300, chunks)
        assert (capture.value(), capture.truncated) == (body[:1000], True)
        assert capture.tail() == body[-300:], size


def test_a_body_barely_past_the_bound_has_the_heads_end_in_its_tail() -> None:
    assert fed(6, 4, [b"abcd", b"efg"]).tail() == b"defg"
    assert fed(6, 4, [b"abcdef", b"g"]).tail() == b"defg"
    assert fed(6, 10, [b"abcdefg"]).tail() == b"abcdefg"


def test_the_tail_holds_a_bounded_amount_however_large_the_chunks() -> None:
    capture = fed(10, 100, [b"x" * 10] + [b"y" * 100_000] * 3 + [b"z" * 30])
    assert capture.tail() == b"y" * 70 + b"z" * 30
    assert sum(len(c) for c in capture._tail or ()) <= 300


def test_without_a_tail_nothing_past_the_bound_is_kept() -> None:
    capture = fed(2, 0, [b"ab", b"cd", b"ef"])
    assert (capture.value(), capture.truncated, capture.tail()) == (b"ab", True, b"")


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate", "raw-deflate"])
def test_the_tail_of_a_compressed_body_is_found_by_decoding_all_of_it(coding: str) -> None:
    body = b"".join(b"line %d\n" % i for i in range(200_000))  # 2.5 MB decoded
    if coding == "raw-deflate":
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        packed, coding = packer.compress(body) + packer.flush(), "deflate"
    elif coding == "deflate":
        packed = zlib.compress(body)
    else:
        packed = gzip.compress(body)
    assert inflated_tail(packed, coding, 100) == body[-100:]


def test_a_compressed_body_that_decodes_past_the_cap_or_not_at_all_has_no_tail() -> None:
    bomb = gzip.compress(b"\0" * 5_000_001)
    assert inflated_tail(bomb, "gzip", 100, cap=5_000_000) == b""
    assert inflated_tail(bomb, "gzip", 4, cap=5_000_001) == b"\0" * 4
    assert INFLATE_CAP >= 16 * 1024 * 1024  # far beyond any real answer squeezed into the capture bound
    assert inflated_tail(b"not gzip at all", "gzip", 100) == b""
    assert inflated_tail(gzip.compress(b"abc"), "br", 100) == b""
