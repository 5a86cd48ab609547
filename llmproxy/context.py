"""Typed request-scoped keys shared by the server middleware, the proxy, the management API and audit."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

__all__ = ("CALLER", "ERROR_CODE", "REQUEST_ID", "Caller")


class Caller(Protocol):
    """Whose token a proxy request presented: its grant, or the ProxyError that refused it."""

    @property
    def project_id(self) -> str | None: ...

    @property
    def token_hint(self) -> str | None: ...


REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
# The ``error.code`` of a JSON error the server made itself (never an upstream's): access log, metrics.
ERROR_CODE: web.RequestKey[str] = web.RequestKey("error_code", str)
CALLER: web.RequestKey[Caller] = web.RequestKey("caller")
