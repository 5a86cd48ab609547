"""Offline token counting: exact tiktoken counts from the packaged vocabularies, chars/4 without them."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmproxy.openai import tokencount
from llmproxy.openai.tokencount import TokenCounter, encoding_name
from tests.unit.openai.streams import FOX

# the OpenAI cookbook's example, verified there against the API: 124 prompt tokens (gpt-4o), 129 (gpt-4)
# the OpenAI cookbook's example, verified there against the API: 124 prompt tokens (gpt-4o), 129 (gpt-4)
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


# --- offline token counting ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("gpt-oss-20b", "o200k_base"),
        ("some-local-llama", "o200k_base"),
        (None, "o200k_base"),
    ],
)
def test_encoding_follows_the_model(model: str | None, encoding: str) -> None:
    assert encoding_name(model) == encoding


def test_vocabularies_load_offline_and_encode_exactly(counter: TokenCounter) -> None:
    o200k, cl100k = counter.encoding("gpt-4o"), counter.encoding("gpt-4")
    assert o200k is not None and cl100k is not None
    assert o200k.encode_ordinary("Hello, world!") == [13225, 11, 2375, 0]
    assert cl100k.encode_ordinary("Hello, world!") == [9906, 11, 1917, 0]
    assert (counter.count_text("日本語 🚀", "gpt-4o"), counter.count_text("日本語 🚀", "gpt-4")) == (4, 7)
    assert counter.count_text(FOX, "gpt-4o") == counter.count_text(FOX, "gpt-4") == 10


def test_chat_prompt_tokens_match_the_cookbook(counter: TokenCounter) -> None:
    assert counter.count_chat_prompt(COOKBOOK_MESSAGES, "gpt-4o-mini") == 124
    assert counter.count_chat_prompt(COOKBOOK_MESSAGES, "gpt-4-0613") == 129


def test_without_a_vocabulary_counts_are_chars_over_four(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tokencount, "_DATA_PACKAGE", "no-such-distribution")
    offline = TokenCounter(vocab_dir=tmp_path)
    assert not offline.is_exact("gpt-4o")
    assert offline.count_text(FOX, "gpt-4o") == 11  # 44 chars


def test_a_vocabulary_that_fails_its_pinned_hash_is_not_used(tmp_path: Path) -> None:
    (tmp_path / "o200k_base.tiktoken").write_bytes(b"SGVsbG8= 0\n")
    tampered = TokenCounter(vocab_dir=tmp_path)
    assert not tampered.is_exact("gpt-4o")
    assert tampered.is_exact("gpt-4")  # cl100k still comes from the packaged vocabulary
