"""Endpoint kinds: the one spelling of which OpenAI API a path calls, for proxy and dispatch alike."""

from __future__ import annotations

import pytest

from llmproxy.openai.kinds import endpoint_kind


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/chat/completions", "chat"),
        ("/v1/completions", "completions"),
        ("/v1/responses", "responses"),
        ("/v1/embeddings/", "embeddings"),
        ("/v1/models", None),
        ("/v1/responses/resp_1", None),
    ],
)
def test_endpoint_kind_names_token_consuming_apis(path: str, kind: str | None) -> None:
    assert endpoint_kind(path) == kind
