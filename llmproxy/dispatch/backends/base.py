"""What a dispatch backend is: `send(batch)` (or, for a `LineBackend`, `send_lines`) delivers or raises
DeliveryError saying whether to retry.

Also the small pieces every HTTP backend shares: turning a status or a network error into a
DeliveryError (via retry.classify) and a bounded memory of event ids already delivered.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Protocol, TypeGuard

import aiohttp

from llmproxy.dispatch.retry import classify, parse_retry_after
from llmproxy.events.model import Event
from llmproxy.redact import redact_text

__all__ = (
    "Backend",
    "DeliveryError",
    "LineBackend",
    "RecentIds",
    "error_for_exception",
    "error_for_status",
    "post_json",
    "takes_lines",
)

# Statuses that say "this endpoint or this key is wrong": splitting the batch cannot help.
_WHOLE_BATCH_STATUSES = frozenset({401, 402, 403, 404, 405, 407})


class DeliveryError(Exception):
    """A batch (or part of it) was not delivered. `transient`: retrying the same batch may work.

    `whole_batch`: a permanent failure that every event would meet (bad key, wrong URL), so the
    dispatcher need not split the batch to find the culprit.
    """

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        retry_after: float | None = None,
        whole_batch: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.retry_after = retry_after
        self.whole_batch = whole_batch

    def __repr__(self) -> str:
        kind = "transient" if self.transient else "permanent"
        return f"DeliveryError({self.message!r}, {kind}, retry_after={self.retry_after})"


class Backend(Protocol):
    """A destination for events. `send` must be safe to call again with the same events."""

    name: str

    async def send(self, batch: list[Event]) -> None: ...

    async def aclose(self) -> None: ...


class LineBackend(Backend, Protocol):
    """A backend that takes events as the JSON bytes the bus stored (the ``file`` log): the dispatcher
    then calls ``send_lines`` with (event id, one-line JSON) pairs, having only checked each entry."""

    async def send_lines(self, batch: list[tuple[str, bytes]]) -> None: ...


def takes_lines(backend: Backend) -> TypeGuard[LineBackend]:
    return callable(getattr(backend, "send_lines", None))


def error_for_status(
    backend: str, status: int, headers: Mapping[str, str], body: bytes = b""
) -> DeliveryError:
    """The DeliveryError for a non-success HTTP answer, with Retry-After honoured."""
    transient = classify(status) == "transient"
    snippet = redact_text(body[:300].decode("utf-8", "replace")).strip()
    return DeliveryError(
        f"{backend}: HTTP {status}" + (f": {snippet}" if snippet else ""),
        transient=transient,
        retry_after=parse_retry_after(headers.get("Retry-After")) if transient else None,
        whole_batch=status in _WHOLE_BATCH_STATUSES,
    )


def error_for_exception(backend: str, exc: BaseException) -> DeliveryError:
    """The DeliveryError for a network error, timeout or unexpected exception while sending."""
    if isinstance(exc, DeliveryError):
        return exc
    detail = redact_text(str(exc)) or type(exc).__name__
    return DeliveryError(
        f"{backend}: {type(exc).__name__}: {detail}", transient=classify(None, exc) == "transient"
    )


async def post_json(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str], *, backend: str
) -> tuple[int, Mapping[str, str], bytes]:
    """POST a JSON body; network errors and timeouts come back as transient DeliveryErrors."""
    try:
        async with session.post(
            url, data=body, headers={"Content-Type": "application/json", **headers}
        ) as resp:
            return resp.status, resp.headers, await resp.read()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise error_for_exception(backend, exc) from exc


class RecentIds:
    """The last `capacity` ids seen, for deduping redeliveries in bounded memory.

    Ids are kept as their 64-bit `hash()` (process-local, SipHash): about 70 bytes an id instead of
    ~150 for the string; a false "seen" needs a 64-bit collision (~1e-13 per id at 1M ids).
    """

    def __init__(self, capacity: int, ids: Iterable[str] = ()) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._order: deque[int] = deque()
        self._seen: set[int] = set()
        for event_id in ids:
            self.add(event_id)

    def __contains__(self, event_id: object) -> bool:
        return hash(event_id) in self._seen

    def __len__(self) -> int:
        return len(self._order)

    def add(self, event_id: str) -> None:
        key = hash(event_id)
        if key in self._seen:
            return
        if len(self._order) >= self.capacity:
            self._seen.discard(self._order.popleft())
        self._order.append(key)
        self._seen.add(key)
