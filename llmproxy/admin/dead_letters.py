"""The dead letters as the admin UI shows them: how many there are, and the newest as summaries.

Read from where the bus keeps them (DEAD_LETTER_FILE for the in-memory bus, ``<stream>:dead`` for Redis
Streams), on each call: the file in a thread, Redis with a short-lived client. Event bodies and headers
never leave this module; ``llm-proxy events dead show ID`` prints them.
"""

from __future__ import annotations

import msgspec

from llmproxy.config_sections import BusSettings
from llmproxy.events.dead_letters import DeadLetter, DeadLetterFile, DeadLetterStream, event_id
from llmproxy.redis_client import connect_redis

__all__ = ("DeadLetterPage", "DeadLetterRow", "read_dead_letters")

REDIS_TIMEOUT = 2.0


class DeadLetterRow(msgspec.Struct, kw_only=True):
    id: str
    time: str
    service: str
    error: str
    event_id: str
    method: str
    path: str
    status: int


class DeadLetterPage(msgspec.Struct, kw_only=True):
    """Answer of ``GET /admin/api/dead-letters``: newest first."""

    configured: bool
    where: str
    count: int
    entries: list[DeadLetterRow]


class _Summary(msgspec.Struct):
    method: str = ""
    path: str = ""
    status: int = 0


_summary = msgspec.json.Decoder(_Summary)


def _row(letter: DeadLetter) -> DeadLetterRow:
    try:
        s = _summary.decode(letter.event)
    except msgspec.DecodeError:
        s = _Summary()
    return DeadLetterRow(
        id=letter.id, time=letter.time, service=letter.service, error=letter.error,
        event_id=event_id(letter), method=s.method, path=s.path, status=s.status,
    )  # fmt: skip


async def read_dead_letters(settings: BusSettings, newest: int) -> DeadLetterPage:
    """The count and the ``newest`` letters; raises OSError (file) or RedisError (Redis)."""
    bus = settings.kind
    if bus == "in-memory":
        if not settings.dead_letter_file:
            return DeadLetterPage(configured=False, where="", count=0, entries=[])
        file = DeadLetterFile(settings.dead_letter_file)
        letters = await file.entries()
        rows = [_row(letter) for letter in reversed(letters[-newest:] if newest > 0 else [])]
        return DeadLetterPage(configured=True, where=file.where, count=len(letters), entries=rows)
    if bus != "redis-streams":  # the list bus: its dead letters are a list this page does not read
        return DeadLetterPage(configured=False, where="", count=0, entries=[])
    redis = connect_redis(settings.redis, socket_timeout=REDIS_TIMEOUT)
    try:
        stream = DeadLetterStream(redis, settings.streams.key)
        count = await stream.count()
        letters = await stream.entries(newest) if newest > 0 else []
    finally:
        await redis.aclose()
    return DeadLetterPage(
        configured=True,
        where=stream.where,
        count=count,
        entries=[_row(letter) for letter in reversed(letters)],
    )
