"""Typed request-scoped keys shared by the server middleware, the proxy, the management API and audit."""

from __future__ import annotations

from aiohttp import web

__all__ = ("REQUEST_ID",)

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
