"""allowed_models verdicts are remembered for short model names only: the client writes the model, and a
cache holding thousands of multi-megabyte names would be memory anyone with a restricted token could fill."""

from __future__ import annotations

import sys

from llmproxy.proxy.models import model_allowed


def test_a_long_model_name_is_judged_but_not_kept() -> None:
    model = "gpt-4o-" + "x" * 1_000_000
    before = sys.getrefcount(model)
    assert model_allowed(("gpt-4o*",), model) is True
    assert model_allowed(("o3",), model) is False
    assert sys.getrefcount(model) == before


def test_a_model_name_of_ordinary_length_is_judged_by_the_patterns() -> None:
    assert model_allowed(("gpt-4o*", "o3"), "gpt-4o-mini") is True
    assert model_allowed(("gpt-4o*", "o3"), "o3-mini") is False
