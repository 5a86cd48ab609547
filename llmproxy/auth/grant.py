"""The grant of an allowed token: what the proxy needs to forward its request, and nothing secret in repr."""

from __future__ import annotations

from typing import Any

import msgspec

from llmproxy.auth.ratelimit import RateVerdict

__all__ = ("Grant", "Limits")


class Limits(msgspec.Struct, frozen=True):
    """What a token with spend limits needs per request beyond a plain token; a plain token's is None."""

    metered: bool = False  # a budget or TPM limit (the token's or its project's): its usage must be read
    allowed_models: tuple[str, ...] | None = None  # glob patterns; None: any model


class Grant(msgspec.Struct, frozen=True):
    """What an allowed token may do: where to forward, with which key, under which limits."""

    token_id: str
    project_id: str
    api_key: str
    upstream_base_url: str | None
    max_requests: int | None
    rate_limit_per_minute: int | None
    token_hint: str | None = None  # "sk-abcd…wxyz", as the store keeps it: for the access log
    window: RateVerdict | None = None  # this request's rate-limit window (a limited token's, else None)
    limits: Limits | None = None  # None for a token without budgets, TPM or allowed models
    name: str | None = None  # the token's name, for events
    metadata: dict[str, Any] | None = None  # the token's metadata, copied into its events

    def __repr__(self) -> str:  # never the upstream key, even in a debug log
        return f"Grant(token_id={self.token_id!r}, project_id={self.project_id!r})"
