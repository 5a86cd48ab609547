"""One token counter for the module: each vocabulary loads once (~0.2 s)."""

from __future__ import annotations

import pytest

from llmproxy.openai.tokencount import TokenCounter


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()
