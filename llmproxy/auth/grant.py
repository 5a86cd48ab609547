"""The grant of an allowed token: what the proxy needs to forward its request, and nothing secret in repr."""

from __future__ import annotations

import msgspec

from llmproxy.auth.ratelimit import RateVerdict

__all__ = ("Grant",)


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

    def __repr__(self) -> str:  # never the upstream key, even in a debug log
        return f"Grant(token_id={self.token_id!r}, project_id={self.project_id!r})"
