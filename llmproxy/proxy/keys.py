"""Typed keys for what the proxy reads from the application and the request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from llmproxy.context import REQUEST_ID

if TYPE_CHECKING:
    from llmproxy.config import Settings

__all__ = ("REQUEST_ID", "SETTINGS")

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
