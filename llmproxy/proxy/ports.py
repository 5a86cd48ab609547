"""What the proxy needs from the parts it is handed but does not own: the response cache (SPEC §8)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from aiohttp import web
from multidict import CIMultiDictProxy

if TYPE_CHECKING:
    from llmproxy.auth.authority import Grant

__all__ = ("ResponseCache",)


class ResponseCache(Protocol):
    """What the proxy needs from the HTTP response cache (SPEC §8)."""

    max_object_bytes: int

    async def lookup(self, request: web.Request, grant: Grant, body: bytes) -> web.StreamResponse | None: ...

    def storable(self, request: web.Request, status: int, headers: CIMultiDictProxy[str]) -> bool: ...

    def response_headers(self, request: web.Request) -> Iterable[tuple[str, str]]: ...

    async def store(
        self,
        request: web.Request,
        grant: Grant,
        body: bytes,
        status: int,
        headers: CIMultiDictProxy[str],
        response_body: bytes,
    ) -> None: ...
