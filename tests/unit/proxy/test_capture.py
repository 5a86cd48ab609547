"""Bounded body capture: observers never hold more than the configured bytes per body."""

from __future__ import annotations

from llmproxy.proxy.capture import BodyCapture, bounded


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
