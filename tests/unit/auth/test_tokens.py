"""Withering tokens as strings: minting, hashing, hints, and reading the Authorization header."""

from __future__ import annotations

import hashlib
import re

import pytest

from llmproxy.auth.tokens import generate_token, hash_token, parse_bearer, token_hint
from llmproxy.errors import ProxyError, Refusal

GOOD = "sk-" + "A1b2_C3d4-" * 3  # 33 characters, URL-safe base64 alphabet


def refusal_of(header: str | None) -> Refusal:
    with pytest.raises(ProxyError) as caught:
        parse_bearer(header)
    return caught.value.refusal


def test_generated_tokens_are_sk_and_43_url_safe_characters_and_unique() -> None:
    tokens = {generate_token() for _ in range(200)}
    assert len(tokens) == 200
    assert all(re.fullmatch(r"sk-[A-Za-z0-9_\-]{43}", t) for t in tokens)


def test_generated_tokens_pass_the_bearer_shape_check() -> None:
    token = generate_token()
    assert parse_bearer(f"Bearer {token}") == token


def test_hash_is_hex_sha256_of_the_raw_token() -> None:
    assert hash_token(GOOD) == hashlib.sha256(GOOD.encode()).hexdigest()
    assert len(hash_token(GOOD)) == 64


def test_hint_shows_four_characters_of_each_end_after_the_prefix() -> None:
    assert token_hint("sk-abcdEFGHijklMNOPwxyz") == "sk-abcd…wxyz"


def test_hint_of_a_short_value_shows_nothing_of_it() -> None:
    assert token_hint("sk-abc") == "sk-…"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_scheme_is_case_insensitive(scheme: str) -> None:
    assert parse_bearer(f"{scheme} {GOOD}") == GOOD


def test_surrounding_whitespace_is_trimmed() -> None:
    assert parse_bearer(f"  Bearer   {GOOD}  ") == GOOD


@pytest.mark.parametrize("header", [None, "", "   "])
def test_absent_or_blank_header_is_missing_token(header: str | None) -> None:
    assert refusal_of(header) is Refusal.MISSING_TOKEN


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",  # no credentials
        "Bearer   ",
        f"Basic {GOOD}",  # another scheme
        GOOD,  # no scheme
        f"Token {GOOD}",
        "Bearer pk-" + "a" * 30,  # not our prefix
        "Bearer sk-" + "a" * 16,  # 19 characters: too short
        "Bearer sk-" + "a" * 254,  # 257 characters: too long
        "Bearer sk-" + "a" * 20 + "=",  # padding is not in the alphabet
        "Bearer sk-" + "a" * 20 + "+/",  # standard (not URL-safe) base64
        "Bearer sk-" + "a" * 20 + "é",
        f"Bearer {GOOD} extra",  # two words
    ],
)
def test_malformed_header_or_token_shape_is_invalid_token(header: str) -> None:
    assert refusal_of(header) is Refusal.INVALID_TOKEN


def test_length_bounds_are_inclusive() -> None:
    shortest, longest = "sk-" + "a" * 17, "sk-" + "a" * 253
    assert parse_bearer(f"Bearer {shortest}") == shortest
    assert parse_bearer(f"Bearer {longest}") == longest


def test_refusals_answer_401_with_the_spec_codes() -> None:
    with pytest.raises(ProxyError) as missing:
        parse_bearer(None)
    with pytest.raises(ProxyError) as invalid:
        parse_bearer("Bearer nope")
    assert (missing.value.refusal.status, missing.value.refusal.code) == (401, "missing_token")
    assert (invalid.value.refusal.status, invalid.value.refusal.code) == (401, "invalid_token")
