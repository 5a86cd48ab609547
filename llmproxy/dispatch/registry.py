"""Service name → backend factory: adding a backend is one file and one line here.

Only the worker (and the server's wiring) import this module, so importing the dispatcher loads no
backend.
"""

from __future__ import annotations

from collections.abc import Callable

from llmproxy.dispatch.backends.base import Backend
from llmproxy.dispatch.backends.file import FileBackend
from llmproxy.dispatch.backends.helicone import HeliconeBackend
from llmproxy.dispatch.backends.lunary import LunaryBackend

__all__ = ("BACKENDS", "make_backend")


def _file(endpoint: str, api_key: str) -> Backend:
    if not endpoint:
        raise ValueError("the file dispatcher needs a path (--endpoint or FILE_EVENT_LOG)")
    return FileBackend(endpoint)


# (endpoint, api_key) -> Backend; an empty endpoint means the service's default
BACKENDS: dict[str, Callable[[str, str], Backend]] = {
    "file": _file,
    "lunary": lambda endpoint, api_key: LunaryBackend(endpoint, api_key),
    "helicone": lambda endpoint, api_key: HeliconeBackend(endpoint, api_key),
}


def make_backend(service: str, endpoint: str = "", api_key: str = "") -> Backend:
    try:
        factory = BACKENDS[service]
    except KeyError:
        raise ValueError(
            f"unknown dispatcher service {service!r}; known: {', '.join(sorted(BACKENDS))}"
        ) from None
    return factory(endpoint, api_key)
