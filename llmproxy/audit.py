"""The audit trail (SPEC §10): JSON lines in AUDIT_LOG_FILE and rows in the store's audit_events.

``record()`` only queues, so auditing never slows or fails a request. A background task appends each
batch to the file (fsync'd, off the event loop) and then inserts it into the store; the line is
written first, so a store outage loses no record, and rows are retried (bounded) until it is back.
Anything shaped like a secret is masked before it is queued.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from llmproxy.config import AuditSettings
from llmproxy.context import REQUEST_ID
from llmproxy.filemodes import PRIVATE, PRIVATE_DIR, create_file, make_dirs, warn_if_exposed
from llmproxy.redact import redact_text
from llmproxy.store.base import AuditRecord, Store
from llmproxy.store.rows import utc

__all__ = ("Auditor", "audit_record", "mask_secrets")

log = logging.getLogger(__name__)

MAX_QUEUED = 10_000  # records waiting for the file; beyond, the oldest are dropped
MAX_UNSTORED = 10_000  # records in the file but not yet in the store; beyond, the oldest are dropped
BATCH = 500
RETRY_INTERVAL = 1.0
_MAX_TEXT = 1024  # user agents and the like are cut here: a header must not bloat every row
_MAX_DEPTH = 8


class _Line(msgspec.Struct):
    """One line of the audit file; every field is always present so that the lines share a shape."""

    id: str
    timestamp: str
    action: str
    result: str
    reason: str | None
    actor: str
    request_id: str | None
    project_id: str | None
    token_id: str | None
    client_ip: str | None
    user_agent: str | None
    method: str | None
    path: str | None
    details: dict[str, Any]


_encode = msgspec.json.Encoder().encode


class Auditor:
    """Queues audit records and writes them to the audit file and the store in the background."""

    def __init__(self, settings: AuditSettings, store: Store | None) -> None:
        self._enabled = settings.enabled
        self._path = settings.log_file
        self._store = store if settings.store_in_db else None
        self._queued: deque[AuditRecord] = deque()
        self._unstored: deque[AuditRecord] = deque()
        self._wake = asyncio.Event()
        self._writing: asyncio.Task[None] | None = None
        self.dropped = 0
        self._store_failing = False
        self._file_failing = False

    def record(self, record: AuditRecord) -> None:
        """Queue one record (secrets masked, id assigned). Never blocks, never raises."""
        if not self._enabled:
            return
        try:
            record = _prepared(record)
            if len(self._queued) >= MAX_QUEUED:
                self._queued.popleft()
                self._count_drop("queue full")
            self._queued.append(record)
            self._wake.set()
        except Exception:
            log.exception("audit record dropped: could not prepare it")

    async def run(self) -> None:
        """Write queued records as they come, retry unstored rows every second; cancel to stop."""
        if self._enabled and self._path:  # at start: an audit log others may read is worth a warning
            await asyncio.to_thread(warn_if_exposed, self._path, PRIVATE)
        while True:
            timeout = RETRY_INTERVAL if self._unstored else None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write everything queued now. Writes run one after another, each to its end even if its
        caller was cancelled (shutdown), so nothing is lost or written twice."""
        write = self._write(after=self._writing)
        self._writing = asyncio.get_running_loop().create_task(write, name="audit-write")
        await asyncio.shield(self._writing)

    async def _write(self, after: asyncio.Task[None] | None) -> None:
        if after is not None:
            await asyncio.wait([after])
        while self._queued:
            batch = [self._queued.popleft() for _ in range(min(len(self._queued), BATCH))]
            if self._path:
                await self._append(batch)
            if self._store is not None:
                self._unstored.extend(batch)
                while len(self._unstored) > MAX_UNSTORED:
                    self._unstored.popleft()
                    self._count_drop("store unavailable for too long")
        while self._unstored and await self._insert_some():
            pass

    async def _append(self, batch: list[AuditRecord]) -> None:
        data = b"".join(_encode(_line(record)) + b"\n" for record in batch)
        try:
            await asyncio.to_thread(_append_to_file, self._path, data)
        except Exception as exc:
            if not self._file_failing:
                self._file_failing = True
                log.error("cannot write the audit file %s: %s", self._path, exc)
            return
        if self._file_failing:
            self._file_failing = False
            log.info("audit file %s writable again", self._path)

    async def _insert_some(self) -> bool:
        """Insert the oldest unstored rows; False when the store failed (kept for the next try)."""
        assert self._store is not None
        batch = [self._unstored[i] for i in range(min(len(self._unstored), BATCH))]
        try:
            try:
                await self._store.insert_audit(batch)
            except ValueError:  # a row the table refuses, or one a lost reply already stored
                await self._insert_one_by_one(batch)
        except Exception as exc:
            if not self._store_failing:
                self._store_failing = True
                log.warning("cannot store audit rows, %d kept for retry: %s", len(self._unstored), exc)
            return False
        for _ in batch:
            self._unstored.popleft()
        if self._store_failing:
            self._store_failing = False
            log.info("audit rows stored again")
        return True

    async def _insert_one_by_one(self, batch: list[AuditRecord]) -> None:
        assert self._store is not None
        for record in batch:
            try:
                await self._store.insert_audit([record])
            except ValueError as exc:
                log.error("audit row %s refused by the store (%s); it is in the audit file", record.id, exc)

    def _count_drop(self, why: str) -> None:
        self.dropped += 1
        if self.dropped == 1:
            log.warning("audit records are being dropped (%s); counting them in Auditor.dropped", why)


def audit_record(
    action: str,
    result: str,
    *,
    reason: str | None = None,
    actor: str = "system",
    request: web.Request | None = None,
    project_id: str | None = None,
    token_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditRecord:
    """An AuditRecord stamped now (UTC), with who/where taken from ``request`` when given.

    The client IP is the socket peer: X-Forwarded-For is spoofable and not trusted.
    """
    record = AuditRecord(
        timestamp=datetime.now(UTC),
        action=action,
        result=result,
        reason=reason,
        actor=actor,
        project_id=project_id,
        token_id=token_id,
        details=details or {},
    )
    if request is not None:
        record.request_id = request.get(REQUEST_ID)
        record.client_ip = request.remote
        record.user_agent = request.headers.get("User-Agent")
        record.method = request.method
        record.path = request.path
    return record


def mask_secrets(value: Any, depth: int = 0) -> Any:
    """``value`` with every ``sk-…`` secret replaced by its hint (``sk-abcd…wxyz``, as tokens are shown)
    and every bearer/basic credential hidden, looking into dicts and lists (JSON-like data)."""
    if isinstance(value, str):
        return redact_text(value, key_tail=True)
    if depth >= _MAX_DEPTH:
        return value if isinstance(value, int | float | bool) or value is None else "…"
    if isinstance(value, dict):
        return {mask_secrets(k, depth + 1): mask_secrets(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_secrets(v, depth + 1) for v in value]
    return value


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    return redact_text(value[:_MAX_TEXT], key_tail=True)


def _prepared(record: AuditRecord) -> AuditRecord:
    """A copy fit to be written: an id shared by line and row, JSON-only details, no secret anywhere."""
    details = msgspec.to_builtins(record.details, enc_hook=str) if record.details else {}
    return msgspec.structs.replace(
        record,
        id=record.id or uuid.uuid4().hex,
        timestamp=utc(record.timestamp),
        reason=_text(record.reason),
        actor=_text(record.actor) or "system",
        request_id=_text(record.request_id),
        user_agent=_text(record.user_agent),
        path=_text(record.path),
        details=mask_secrets(details) if isinstance(details, dict) else {"details": mask_secrets(details)},
    )


def _line(record: AuditRecord) -> _Line:
    return _Line(
        id=record.id,
        timestamp=record.timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        action=record.action,
        result=record.result,
        reason=record.reason,
        actor=record.actor,
        request_id=record.request_id,
        project_id=record.project_id,
        token_id=record.token_id,
        client_ip=record.client_ip,
        user_agent=record.user_agent,
        method=record.method,
        path=record.path,
        details=record.details,
    )


def _append_to_file(path: str, data: bytes) -> None:
    """Append and fsync (runs in a worker thread). Opened per batch, so a rotated file is followed."""
    make_dirs(os.path.dirname(path), PRIVATE_DIR)
    fd = create_file(path, PRIVATE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
