"""Typed keys for what the proxy reads from the application and the request."""

from __future__ import annotations

from aiohttp import web

from llmproxy.context import CALLER, REQUEST_ID

__all__ = ("CALLER", "CANCEL_ON_DISCONNECT", "REQUEST_ID")

# While true, the server cancels the request's handler as soon as its client disconnects
# (server/edge.py). The proxy sets it around the upstream exchange only, never around a store write.
CANCEL_ON_DISCONNECT: web.RequestKey[bool] = web.RequestKey("cancel-on-disconnect", bool)
