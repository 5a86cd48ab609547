"""A Lunary ingestion server on loopback that answers like the real one (research/backends.md §1, §5.1).

Real behaviour: auth by `Authorization: Bearer <uuid>` / `X-API-Key` (402 missing, 401 wrong), a body
without `events` is a 500 "Missing events payload.", events are processed sorted by timestamp and a
duplicate `start` is `success: false` in a 200 answer. Strict extras (`strict=True`): each event is
checked for the fields and types the real server relies on; a failed check is recorded in
`violations` and answered `success: false` with the reason, so a payload bug cannot pass unnoticed.
Faults are scripted with `inject(...)` or `POST /_fake/faults`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from datetime import datetime
from typing import Any

from aiohttp import web

__all__ = ("FakeLunary",)

RUN_TYPES = {
    "llm",
    "chain",
    "agent",
    "tool",
    "log",
    "embed",
    "retriever",
    "chat",
    "convo",
    "message",
    "thread",
}
EVENT_NAMES = {"start", "end", "error", "feedback", "update", "chat", "custom-event"}
MAX_BODY = 20 * 1024 * 1024
DUPLICATE = "Run with this ID already exists in the database."


class FakeLunary:
    """`async with FakeLunary() as fake:` → `fake.url` is the base URL to configure."""

    def __init__(self, api_key: str | None = None, *, strict: bool = True) -> None:
        self.api_key = api_key or str(uuid.uuid4())
        self.strict = strict
        self.requests: list[dict[str, Any]] = []  # every POST: headers, raw body, parsed json
        self.runs: dict[
            str, dict[str, Any]
        ] = {}  # runId -> {"start": ev, "end": ev | None, "error": ev | None}
        self.results: list[dict[str, Any]] = []  # every per-event result sent back
        self.violations: list[str] = []
        self.faults: deque[dict[str, Any]] = deque()
        self.url = ""
        self._runner: web.AppRunner | None = None

    def inject(self, *faults: dict[str, Any]) -> None:
        """Answer the next requests with these, in order: {"status", "headers", "body", "delay_ms",
        "drop_connection"}, or {"pass": True} to handle one request normally."""
        self.faults.extend(faults)

    async def __aenter__(self) -> FakeLunary:
        app = web.Application(client_max_size=MAX_BODY + 1024)
        app.router.add_post("/v1/runs/ingest", self._ingest)
        app.router.add_get("/_fake/requests", self._list_requests)
        app.router.add_post("/_fake/reset", self._reset)
        app.router.add_post("/_fake/faults", self._add_faults)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- the ingestion endpoint -------------------------------------------------------------

    async def _ingest(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        record: dict[str, Any] = {"headers": dict(request.headers), "body": raw, "json": _parsed(raw)}
        self.requests.append(record)
        fault = self.faults.popleft() if self.faults else None
        if fault is not None and not fault.get("pass"):
            return await _apply_fault(request, fault)
        auth = self._check_auth(request)
        if auth is not None:
            return auth
        if len(raw) > MAX_BODY:
            return web.json_response({"message": "request entity too large"}, status=413)
        if not request.content_type == "application/json":
            body: Any = {}  # koa-bodyparser leaves the body empty for other types
        else:
            try:
                body = json.loads(raw)
            except ValueError:
                return web.json_response({"message": "invalid JSON"}, status=400)
        events = body.get("events") if isinstance(body, dict) else None
        if not events:
            self.violations.append("body has no 'events' (a bare array is what the Go client sent)")
            return web.json_response({"message": "Missing events payload."}, status=500)
        events = events if isinstance(events, list) else [events]
        ordered = sorted(
            events, key=lambda e: (_epoch_ms(e.get("timestamp")) if isinstance(e, dict) else None) or 0.0
        )
        results = [self._register(event) for event in ordered]
        self.results.extend(results)
        return web.json_response({"results": results})

    def _check_auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        key = header[7:].strip() if header.startswith("Bearer ") else request.headers.get("X-API-Key", "")
        if not key:
            return web.json_response({"message": "Incorrect project id format"}, status=402)
        try:
            uuid.UUID(key)
        except ValueError:
            return web.json_response({"message": "Invalid access token"}, status=401)
        if key != self.api_key:
            return web.json_response({"message": "Invalid API key"}, status=401)
        return None

    def _register(self, event: Any) -> dict[str, Any]:
        if not isinstance(event, dict):
            self.violations.append(f"event {event!r} is not an object")
            return {"id": None, "success": False, "error": "event is not an object"}
        run_id = str(event.get("runId"))
        problems = self._problems(event) if self.strict else []
        if problems:
            self.violations.extend(f"{run_id}: {p}" for p in problems)
            return {"id": run_id, "success": False, "error": "; ".join(problems)}
        name = event.get("event")
        run = self.runs.get(run_id)
        if name == "start":
            if run is not None:
                return {"id": run_id, "success": False, "error": DUPLICATE}
            self.runs[run_id] = {"start": event, "end": None, "error": None, "status": "started"}
        elif name in ("end", "error"):
            if run is None:
                if self.strict:
                    self.violations.append(f"{run_id}: {name} without a start (the real server drops it)")
                return {"id": run_id, "success": True}
            if (_epoch_ms(event.get("timestamp")) or 0.0) < (_epoch_ms(run["start"].get("timestamp")) or 0.0):
                self.violations.append(f"{run_id}: {name} is timestamped before its start")
            run[name] = event
            run["status"] = "success" if name == "end" else "error"
        return {"id": run_id, "success": True}

    @staticmethod
    def _problems(event: Any) -> list[str]:
        """What the real server needs from an event (stricter than it checks)."""
        if not isinstance(event, dict):
            return ["event is not an object"]
        problems = []
        if event.get("type") not in RUN_TYPES:
            problems.append(f"type {event.get('type')!r} not one of {sorted(RUN_TYPES)}")
        name = event.get("event")
        if event.get("type") != "log" and name not in EVENT_NAMES:
            problems.append(f"event {name!r} not one of {sorted(EVENT_NAMES)}")
        run_id = event.get("runId")
        try:
            uuid.UUID(run_id)
        except (TypeError, ValueError, AttributeError):
            problems.append(f"runId {run_id!r} is not a UUID string")
        if _epoch_ms(event.get("timestamp")) is None:
            problems.append(f"timestamp {event.get('timestamp')!r} is not ISO-8601 with a zone nor epoch ms")
        if name == "start" and event.get("type") in ("llm", "embed"):
            if not isinstance(event.get("name"), str) or not event["name"]:
                problems.append("llm start without a string 'name' (the model)")
            if "input" not in event:
                problems.append("llm start without 'input'")
        if name == "end":
            if "output" not in event:
                problems.append("end without 'output'")
            usage = event.get("tokensUsage")
            if usage is not None and not all(
                isinstance(usage.get(k), int) and usage[k] >= 0 for k in ("prompt", "completion")
            ):
                problems.append(f"tokensUsage {usage!r} needs non-negative int prompt and completion")
        if name == "error" and not isinstance((event.get("error") or {}).get("message"), str):
            problems.append("error event without error.message string")
        if "tags" in event and not (
            isinstance(event["tags"], list) and all(isinstance(t, str) for t in event["tags"])
        ):
            problems.append("tags must be a list of strings")
        metadata = event.get("metadata")
        if metadata is not None:
            if not isinstance(metadata, dict):
                problems.append("metadata must be an object")
            elif any(isinstance(v, dict | list) for v in metadata.values()):
                problems.append("metadata values must be scalars (the server drops nested ones)")
        if "userProps" in event and "userId" not in event:
            problems.append("userProps without userId")
        return problems

    # --- control endpoints ------------------------------------------------------------------

    async def _list_requests(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": [{"headers": r["headers"], "json": r["json"]} for r in self.requests],
                "violations": self.violations,
            }
        )

    async def _reset(self, request: web.Request) -> web.Response:
        self.requests.clear()
        self.runs.clear()
        self.results.clear()
        self.violations.clear()
        self.faults.clear()
        return web.json_response({})

    async def _add_faults(self, request: web.Request) -> web.Response:
        self.inject(*(await request.json()).get("next", []))
        return web.json_response({})


async def _apply_fault(request: web.Request, fault: dict[str, Any]) -> web.StreamResponse:
    if fault.get("delay_ms"):
        await asyncio.sleep(fault["delay_ms"] / 1000)
    if fault.get("drop_connection"):
        assert request.transport is not None
        request.transport.abort()
        return web.Response()
    return web.Response(
        status=fault.get("status", 500), headers=fault.get("headers", {}), text=fault.get("body", "")
    )


def _parsed(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _epoch_ms(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.timestamp() * 1000 if parsed.tzinfo is not None else None
