"""Which OpenAI API a request path calls: the one spelling of an endpoint kind, for proxy and dispatch."""

from __future__ import annotations

from enum import StrEnum

__all__ = ("EndpointKind", "endpoint_kind")


class EndpointKind(StrEnum):
    """A token-consuming OpenAI API; any other path has no kind (None)."""

    CHAT = "chat"
    COMPLETIONS = "completions"  # the legacy text completions API
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"


# checked in order: /chat/completions also ends in /completions
_SUFFIXES = (
    ("/chat/completions", EndpointKind.CHAT),
    ("/completions", EndpointKind.COMPLETIONS),
    ("/responses", EndpointKind.RESPONSES),
    ("/embeddings", EndpointKind.EMBEDDINGS),
)


def endpoint_kind(path: str) -> EndpointKind | None:
    """The API a path calls (`/v1/chat/completions` → CHAT, a trailing slash ignored), None for others."""
    path = path.rstrip("/")
    for suffix, kind in _SUFFIXES:
        if path.endswith(suffix):
            return kind
    return None
