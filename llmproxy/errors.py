"""Every refusal the proxy and the management API can answer, and its one (status, code) pair.

The table in SPEC §5 lives here and nowhere else: code raises ``ProxyError(Refusal.X)`` and the
server turns it into ``{"error": {"message", "type", "code"}}`` with the right status.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

__all__ = (
    "FINAL_REFUSALS",
    "ClientBodyTimeout",
    "ConfigError",
    "Outcome",
    "ProxyError",
    "Refusal",
    "StartupError",
    "StoreUnavailable",
    "error_body",
)


class Refusal(enum.Enum):
    """A reason to refuse a request: (HTTP status, error.code, error.type, default message)."""

    MISSING_TOKEN = (
        401,
        "missing_token",
        "authentication_error",
        "Missing bearer token in Authorization header",
    )
    INVALID_TOKEN = (401, "invalid_token", "authentication_error", "Invalid token")
    TOKEN_REVOKED = (401, "token_revoked", "authentication_error", "Token has been revoked")
    TOKEN_EXPIRED = (401, "token_expired", "authentication_error", "Token has expired")
    QUOTA_EXCEEDED = (429, "quota_exceeded", "rate_limit_error", "Token request quota exceeded")
    RATE_LIMITED = (429, "rate_limited", "rate_limit_error", "Token rate limit exceeded")
    # a spent budget is OpenAI's "insufficient_quota" (429, which its SDKs raise as RateLimitError),
    # answered with x-should-retry: false: it is not a moment's limit but money
    BUDGET_EXCEEDED = (429, "budget_exceeded", "insufficient_quota", "Budget exceeded")
    MODEL_NOT_ALLOWED = (403, "model_not_allowed", "permission_error", "Model not allowed for this token")
    PROJECT_INACTIVE = (403, "project_inactive", "permission_error", "Project is inactive")
    SERVICE_UNAVAILABLE = (503, "service_unavailable", "server_error", "Service temporarily unavailable")
    ENDPOINT_NOT_ALLOWED = (404, "endpoint_not_allowed", "invalid_request_error", "Endpoint not allowed")
    METHOD_NOT_ALLOWED = (405, "method_not_allowed", "invalid_request_error", "Method not allowed")
    PARAM_NOT_ALLOWED = (400, "param_not_allowed", "invalid_request_error", "Parameter value not allowed")
    ORIGIN_NOT_ALLOWED = (403, "origin_not_allowed", "permission_error", "Origin not allowed")
    ORIGIN_REQUIRED = (400, "origin_required", "invalid_request_error", "Origin header required")
    CSRF_INVALID = (403, "csrf_invalid", "permission_error", "Missing or invalid X-CSRF-Token")
    HEADER_REQUIRED = (400, "header_required", "invalid_request_error", "Required header missing")
    BODY_TOO_LARGE = (413, "request_too_large", "invalid_request_error", "Request body too large")
    BAD_REQUEST = (400, "bad_request", "invalid_request_error", "Bad request")
    INVALID_REQUEST_BODY = (
        400,
        "invalid_request_body",
        "invalid_request_error",
        "Request body does not decode as its Content-Encoding says",
    )
    REQUEST_TIMEOUT = (408, "request_timeout", "invalid_request_error", "Request body not received in time")
    UPSTREAM_UNAVAILABLE = (502, "upstream_unavailable", "upstream_error", "Upstream unavailable")
    UPSTREAM_TIMEOUT = (504, "upstream_timeout", "upstream_error", "Upstream timed out")
    # management API
    UNAUTHORIZED = (401, "unauthorized", "authentication_error", "Missing or invalid management token")
    TOO_MANY_ATTEMPTS = (429, "too_many_attempts", "rate_limit_error", "Too many failed attempts")
    INVALID_JSON = (400, "invalid_json", "invalid_request_error", "Request body is not valid JSON")
    INVALID_FIELD = (422, "invalid_field", "invalid_request_error", "Invalid field")
    NOT_FOUND = (404, "not_found", "invalid_request_error", "Not found")
    CONFLICT = (409, "conflict", "invalid_request_error", "Conflict")
    HTTP_METHOD_NOT_ALLOWED = (405, "method_not_allowed", "invalid_request_error", "Method not allowed")
    INTERNAL = (500, "internal_error", "server_error", "Internal server error")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def code(self) -> str:
        return self.value[1]

    @property
    def type(self) -> str:
        return self.value[2]

    @property
    def message(self) -> str:
        return self.value[3]


class Outcome(enum.Enum):
    """How a forwarded request ended: (the status recorded when the upstream's was not relayed, the
    event's ``error``, the refusal answered while nothing was sent yet). The one table for both."""

    _value_: tuple[int, str | None, Refusal | None]  # members mix str and None: typed, or .value is Any
    OK = (0, None, None)
    UPSTREAM_TIMEOUT = (504, "upstream_timeout", Refusal.UPSTREAM_TIMEOUT)
    UPSTREAM_UNAVAILABLE = (502, "upstream_unavailable", Refusal.UPSTREAM_UNAVAILABLE)
    CLIENT_GONE = (499, "client_disconnected", Refusal.BAD_REQUEST)  # 499: client closed request
    CLIENT_TIMEOUT = (408, "request_timeout", Refusal.REQUEST_TIMEOUT)
    BODY_TOO_LARGE = (413, "request_too_large", Refusal.BODY_TOO_LARGE)
    INTERNAL = (500, "internal_error", Refusal.INTERNAL)

    @property
    def status(self) -> int:
        return self._value_[0]

    @property
    def error(self) -> str | None:
        return self._value_[1]

    @property
    def refusal(self) -> Refusal:
        refusal = self._value_[2]
        assert refusal is not None, "OK refuses nothing"
        return refusal


# Refusals that the same request can never turn into a success by being sent again: answered with
# ``x-should-retry: false``, which the OpenAI SDKs obey (they would retry a 429 twice in vain).
FINAL_REFUSALS = frozenset(
    {
        Refusal.QUOTA_EXCEEDED,
        Refusal.BUDGET_EXCEEDED,
        Refusal.MODEL_NOT_ALLOWED,
        Refusal.MISSING_TOKEN,
        Refusal.INVALID_TOKEN,
        Refusal.TOKEN_REVOKED,
        Refusal.TOKEN_EXPIRED,
    }
)


class ProxyError(Exception):
    """A refusal with an optional message, extra fields (``param``) and response headers.

    ``project_id``/``token_id`` name whose token was refused, when it is known, for the audit record, and
    ``token_hint`` (``sk-abcd…wxyz``) for the access log; they never reach the client.
    """

    def __init__(
        self,
        refusal: Refusal,
        message: str | None = None,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        project_id: str | None = None,
        token_id: str | None = None,
        token_hint: str | None = None,
    ) -> None:
        super().__init__(message or refusal.message)
        self.refusal = refusal
        self.message = message or refusal.message
        self.param = param
        self.headers = headers or {}
        self.project_id = project_id
        self.token_id = token_id
        self.token_hint = token_hint

    def body(self) -> bytes:
        return error_body(self.refusal, self.message, param=self.param)


class ClientBodyTimeout(TimeoutError):
    """The client sent no body bytes for CLIENT_BODY_TIMEOUT: raised where the body is read (→ 408).

    A TimeoutError, so that aiohttp's own read of a body nobody read ends quietly on it."""


class StoreUnavailable(Exception):
    """The database could not be reached or answered with an operational error."""


class ConfigError(Exception):
    """Bad configuration: the CLI prints the message on one line and exits 2."""


class StartupError(Exception):
    """A long-running command could not start (port in use, database or Redis unreachable): exit 1."""


_encode = msgspec.json.encode


def error_body(refusal: Refusal, message: str | None = None, *, param: str | None = None) -> bytes:
    """The OpenAI-style error document for ``refusal``."""
    err: dict[str, Any] = {"message": message or refusal.message, "type": refusal.type, "code": refusal.code}
    if param is not None:
        err["param"] = param
    return _encode({"error": err})
