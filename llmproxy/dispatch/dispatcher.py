"""The dispatch loop: read deliveries, batch them, hand them to one backend, ack what it accepted.

Ack only after the backend accepted a batch (at-least-once; backends dedupe by event id).
- Transient failure: the SAME batch is retried with backoff (retry.backoff_s, Retry-After honoured)
  up to `max_attempts` sends; then it is left unacked and the source redelivers it later (Redis
  streams: XAUTOCLAIM, counting deliveries). `max_attempts=None` retries until stop instead (use it
  for a source without redelivery, like the in-memory bus). Nothing is retried after stop.
- Permanent failure: a batch of one is dead-lettered; a bigger batch is split in halves and each
  half sent again, so only the events the backend refuses are dead-lettered (unless the error is
  `whole_batch`, e.g. a bad key, when every event would fail alike).
- Undecodable deliveries and those seen more than `max_deliveries` times are dead-lettered unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from llmproxy.dispatch.backends.base import (
    Backend,
    DeliveryError,
    LineBackend,
    error_for_exception,
    takes_lines,
)
from llmproxy.dispatch.retry import backoff_s
from llmproxy.events.model import Event, check_event, decode_event, encode_event

if TYPE_CHECKING:
    from llmproxy.events.bus import Delivery, EventSource

__all__ = ("DispatchStats", "Dispatcher")

logger = logging.getLogger(__name__)

# Longest single read, so a stop is noticed within a quarter second and a worker whose server is gone exits
# within a second. Reads are not cancelled on stop: what Redis answers (entries the server wrote just before
# it sent SIGTERM) is still sent, and a list or in-memory read may have taken entries nobody else will see.
MAX_BLOCK_S = 0.25
# After a read that left the batch short, wait this long (at most a quarter of the flush interval, never
# past the batch's deadline) before reading again: a trickle of events is then fetched a few dozen per
# read instead of one read (an XREADGROUP round trip, a task wake-up) per XADD. The batch still goes out
# when full or flush_interval after its first event, as before.
READ_LINGER_S = 0.1
# Batches whose ids reads drop: the one being sent and the two before it (Dispatcher._held).
HELD_BATCHES = 3


class DispatchStats(msgspec.Struct, kw_only=True):
    """Counters of one dispatcher, in events (batches: batches collected and sent)."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0  # left unacked after the retry budget or a stop: the source redelivers them
    dead_lettered: int = 0
    batches: int = 0
    last_error: str | None = None


class Dispatcher:
    """Moves events from one EventSource to one Backend until `stop` is set."""

    def __init__(
        self,
        source: EventSource,
        backend: Backend,
        *,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        max_deliveries: int = 10,
        max_attempts: int | None = 8,
        stats: DispatchStats | None = None,
        backoff: Callable[[int, float | None], float] = backoff_s,
    ) -> None:
        self.source = source
        self.backend = backend
        self.batch_size = max(1, batch_size)
        self.flush_interval = flush_interval
        self.max_deliveries = max_deliveries
        self.max_attempts = max_attempts
        self.stats = stats if stats is not None else DispatchStats()
        self._backoff = backoff
        self._linger_s = min(READ_LINGER_S, flush_interval / 4)
        self._lines: LineBackend | None = backend if takes_lines(backend) else None
        self._ahead: asyncio.Task[list[Delivery]] | None = None  # the next batch, read while one is sent
        self._acking: asyncio.Task[None] | None = None  # the last batch's ack, done while the next is sent
        # Ids of the batch being sent and of the two before it (acked or being acked). A send that outlasts
        # the claim time lets a read claim its entries back before the XACK lands; such entries are ours
        # already, not redeliveries: reads drop them. A batch left pending is released from here.
        self._held: deque[set[str]] = deque()  # per batch, the last HELD_BATCHES
        self._held_ids: set[str] = set()  # all of them (the batches' sets are disjoint)

    async def run(self, stop: asyncio.Event) -> None:
        """Collect and deliver until ``stop``. The source's round trips overlap the backend's: the next
        batch is read while the current one is sent (one batch ahead at most, unacked until sent), and a
        sent batch is acked while the next one is sent (one ack in flight at most)."""
        logger.info("dispatcher %s starting (batch %d)", self.backend.name, self.batch_size)
        source_failures = 0
        loop = asyncio.get_running_loop()
        try:
            while self._ahead is not None or not stop.is_set():
                try:
                    if self._ahead is not None:
                        reading, self._ahead = self._ahead, None  # let go first: if it failed, read afresh
                        batch = await reading
                    else:
                        batch = await self._collect(stop)
                    if batch:
                        self.stats.batches += 1
                        self._hold(batch)
                        if not stop.is_set():
                            self._ahead = loop.create_task(
                                self._collect(stop), name=f"{self.backend.name}-read-ahead"
                            )
                        await self._deliver(batch, stop)
                    source_failures = 0
                except Exception as exc:  # the source (Redis) is down (BusUnavailable): back off, try again
                    source_failures += 1
                    self.stats.last_error = f"source: {exc!r}"
                    logger.warning(
                        "dispatcher %s: source failed: %r",
                        self.backend.name,
                        exc,
                        exc_info=source_failures == 1,
                    )
                    await self._stopped_during(backoff_s(source_failures, base=0.1, cap=2.0), stop)
        finally:
            ahead, self._ahead = self._ahead, None
            if ahead is not None:  # cancelled: what it read is redelivered if the source redelivers
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
            await self._last_ack_done()
        s = self.stats
        logger.info(
            "dispatcher %s stopped ◆ %d delivered ◆ %d retried ◆ %d failed ◆ %d dead-lettered",
            self.backend.name, s.delivered, s.retried, s.failed, s.dead_lettered,
        )  # fmt: skip

    async def lag(self) -> dict[str, int]:
        return await self.source.lag()

    async def _collect(self, stop: asyncio.Event) -> list[Delivery]:
        """Up to batch_size deliveries, or what arrived within flush_interval of the first one.

        A read that fails (Redis down) once some deliveries are collected ends the batch instead of dropping
        it: Redis may have lost them with its pending list (a restart without persistence), and if it did
        not, their redelivery is deduplicated by the backend. The next read meets the outage and backs off.
        """
        loop = asyncio.get_running_loop()
        batch: list[Delivery] = []
        deadline: float | None = None
        while len(batch) < self.batch_size and not stop.is_set():
            wait = (self.flush_interval or MAX_BLOCK_S) if deadline is None else deadline - loop.time()
            if wait <= 0:
                break
            try:
                arrived = await self.source.read(self.batch_size - len(batch), min(wait, MAX_BLOCK_S))
                await self._screen(self._not_held(arrived), batch)
            except Exception as exc:
                if not batch:
                    raise
                self.stats.last_error = f"source: {exc!r}"
                logger.warning("dispatcher %s: source failed with %d events collected, sending them: %r",
                               self.backend.name, len(batch), exc)  # fmt: skip
                break
            if not batch:
                continue
            if deadline is None:
                deadline = loop.time() + self.flush_interval
            if arrived and len(batch) < self.batch_size:
                linger = min(self._linger_s, deadline - loop.time())
                if linger > 0 and await self._stopped_during(linger, stop):
                    break
        return batch

    def _hold(self, batch: list[Delivery]) -> None:
        ids = {d.entry_id for d in batch}
        if len(self._held) == HELD_BATCHES:
            self._held_ids -= self._held.popleft()
        self._held.append(ids)
        self._held_ids |= ids

    def _not_held(self, arrived: list[Delivery]) -> list[Delivery]:
        """``arrived`` without entries this dispatcher is sending or acking (claimed back: see ``_held``)."""
        held = self._held_ids
        if not held:
            return arrived
        return [d for d in arrived if d.entry_id not in held]

    def _release(self, batch: list[Delivery]) -> None:
        """``batch`` is left pending: when it is claimed again, that is the redelivery it needs."""
        ids = {d.entry_id for d in batch}
        self._held_ids -= ids
        for held in self._held:
            held -= ids

    async def _screen(self, arrived: list[Delivery], batch: list[Delivery]) -> None:
        """Add to ``batch`` what may be sent, then dead-letter what must never reach the backend (in that
        order: a dead letter that fails must not cost the good deliveries of the same read)."""
        undecodable: list[Delivery] = []
        exhausted: list[Delivery] = []
        for d in arrived:
            if not self._identify(d):
                undecodable.append(d)
            elif d.deliveries > self.max_deliveries:
                exhausted.append(d)
            else:
                batch.append(d)
        if undecodable:
            await self._dead_letter(undecodable, "undecodable event")
        if exhausted:
            await self._dead_letter(exhausted, f"delivered more than {self.max_deliveries} times")

    def _identify(self, d: Delivery) -> bool:
        """Set ``d.event_id`` from what the backend needs: the stored bytes only checked (a line backend
        writes them as they are) or decoded into ``d.event``. False: ``d`` is not an event."""
        if d.event_id:  # the in-memory bus hands out Events
            return True
        try:
            if self._lines is not None:
                d.event_id = check_event(d.raw)
            else:
                d.event = decode_event(d.raw)
                d.event_id = d.event.id
        except (msgspec.DecodeError, UnicodeDecodeError):
            return False
        return bool(d.event_id)  # an event without an id cannot be deduplicated: not one of ours

    async def _deliver(self, batch: list[Delivery], stop: asyncio.Event) -> None:
        """Send until accepted (ack), refused (split / dead-letter) or out of attempts (leave)."""
        attempt = 0
        while True:
            try:
                if self._lines is not None:
                    await self._lines.send_lines([(d.event_id, _line(d)) for d in batch])
                else:
                    await self.backend.send([_event(d) for d in batch])
            except Exception as exc:
                error = error_for_exception(self.backend.name, exc)
                if not isinstance(exc, DeliveryError) and not error.transient:  # a bug: show where
                    logger.exception("dispatcher %s: backend raised", self.backend.name)
            else:
                await self._last_ack_done()
                self._acking = asyncio.get_running_loop().create_task(
                    self._ack(batch), name=f"{self.backend.name}-ack"
                )
                return
            self.stats.last_error = error.message
            if not error.transient:
                if len(batch) > 1 and not error.whole_batch:
                    half = len(batch) // 2
                    await self._deliver(batch[:half], stop)
                    await self._deliver(batch[half:], stop)
                else:
                    await self._dead_letter(batch, error.message)
                return
            self._abandon_read_ahead()
            attempt += 1
            out_of_attempts = self.max_attempts is not None and attempt >= self.max_attempts
            if out_of_attempts or await self._stopped_during(self._backoff(attempt, error.retry_after), stop):
                self.stats.failed += len(batch)
                self._release(batch)
                logger.warning("dispatcher %s: %d events left for redelivery: %s",
                               self.backend.name, len(batch), error.message)  # fmt: skip
                return
            self.stats.retried += len(batch)

    async def _ack(self, batch: list[Delivery]) -> None:
        try:
            await self.source.ack([d.entry_id for d in batch])
        except BaseException:
            self._release(batch)
            raise
        self.stats.delivered += len(batch)

    async def _last_ack_done(self) -> None:
        """Wait for the ack in flight. One that failed (Redis down) leaves its batch pending, to be redelivered
        and deduplicated by the backend: it is logged, and the next read meets the outage and backs off."""
        acking, self._acking = self._acking, None
        if acking is None:
            return
        try:
            await acking
        except Exception as exc:
            self.stats.last_error = f"source: {exc!r}"
            logger.warning("dispatcher %s: an ack failed, its batch will be redelivered: %r",
                           self.backend.name, exc)  # fmt: skip

    def _abandon_read_ahead(self) -> None:
        """The backend is failing: a batch read ahead would sit unacked through the retries, long enough
        for another consumer to claim and send it too. Leave it to the source's redelivery instead; with a
        source that never redelivers (list, in-memory) it was taken for good, so it is kept and sent."""
        ahead = self._ahead
        if ahead is None or not self.source.redelivers:
            return
        self._ahead = None
        ahead.cancel()
        ahead.add_done_callback(_retrieved)

    async def _dead_letter(self, deliveries: list[Delivery], error: str) -> None:
        await self.source.dead_letter(deliveries, error)
        self.stats.dead_lettered += len(deliveries)
        logger.warning(
            "dispatcher %s: %d events dead-lettered: %s", self.backend.name, len(deliveries), error
        )

    @staticmethod
    async def _stopped_during(seconds: float, stop: asyncio.Event) -> bool:
        """Sleep, waking early if stop is set; whether it was."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        return stop.is_set()


def _line(d: Delivery) -> bytes:
    """The event as one JSON line: the stored bytes, unless they span lines (not written by us)."""
    if not d.raw:  # the in-memory bus hands out Events
        assert d.event is not None
        return encode_event(d.event)
    return d.raw if b"\n" not in d.raw else msgspec.json.format(d.raw, indent=-1)


def _event(d: Delivery) -> Event:
    """The decoded Event (``_identify`` decodes for backends that do not take lines)."""
    assert d.event is not None
    return d.event


def _retrieved(task: asyncio.Task[list[Delivery]]) -> None:
    """An abandoned read-ahead's failure is expected (and logged by the next read): not an unhandled error."""
    if not task.cancelled():
        task.exception()
