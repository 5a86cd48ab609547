"""The event pipeline the server owns: the bus the proxy publishes to and the dispatchers draining it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from llmproxy.config import Settings
from llmproxy.proxy.capture import Exchange

__all__ = ("EventPipeline",)


class EventPipeline:
    """Placeholder until the buses land: no observers, nothing to start."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.observers: list[Callable[[Exchange], None]] = []
        self.probes: dict[str, Callable[[], Awaitable[None]]] = {}

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
