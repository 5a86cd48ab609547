"""A Helicone async-log worker on loopback that answers like the real one (research/backends.md §2, §5.2).

Real order: body > 10 MiB → 400 "Payload too large"; no Authorization → 401 "Unauthorized";
`validateAsyncLogModel` (its exact messages) → 400 {"error"}; wrong key → 401 {"error"}; else 200 "ok"
with `helicone-id`. Strict extras are recorded in `violations` (tests assert it stays empty): sane
Unix-seconds timing, end after start, string meta values, a UUID Helicone-Request-Id, only
Helicone-* meta keys, `streamed_data` when the logged request says `stream: true`, usage for 2xx
chat/embeddings, no unknown top-level fields. Faults are scripted with `inject(...)`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from typing import Any

from aiohttp import web

__all__ = ("FakeHelicone",)

MAX_PAYLOAD = 10 * 1024 * 1024
LOG_PATHS = ("/custom/v1/log", "/oai/v1/log", "/v1/trace/custom/v1/log")


class FakeHelicone:
    """`async with FakeHelicone() as fake:` → `fake.url` is the base URL to configure."""

    def __init__(self, api_key: str = "sk-helicone-test-key", *, strict: bool = True) -> None:
        self.api_key = api_key
        self.strict = strict
        self.requests: list[dict[str, Any]] = []  # every POST: path, headers, raw body, parsed json
        self.logs: list[dict[str, Any]] = []  # accepted log bodies, in arrival order
        self.violations: list[str] = []
        self.faults: deque[dict[str, Any]] = deque()
        self.url = ""
        self._runner: web.AppRunner | None = None

    def inject(self, *faults: dict[str, Any]) -> None:
        """Answer the next requests with these, in order: {"status", "headers", "body", "delay_ms",
        "drop_connection"}, or {"pass": True} to handle one request normally."""
        self.faults.extend(faults)

    def logged_ids(self) -> list[str]:
        return [log["providerRequest"]["meta"].get("Helicone-Request-Id", "") for log in self.logs]

    async def __aenter__(self) -> FakeHelicone:
        app = web.Application(client_max_size=MAX_PAYLOAD * 2)
        for path in LOG_PATHS:
            app.router.add_post(path, self._log)
        app.router.add_get("/_fake/requests", self._list_requests)
        app.router.add_post("/_fake/reset", self._reset)
        app.router.add_post("/_fake/faults", self._add_faults)
        app.router.add_route("*", "/{tail:.*}", self._invalid_path)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _log(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        record: dict[str, Any] = {
            "path": request.path,
            "headers": dict(request.headers),
            "body": raw,
            "json": None,
        }
        self.requests.append(record)
        try:
            model = record["json"] = json.loads(raw)
        except ValueError:
            model = _UNPARSEABLE
        fault = self.faults.popleft() if self.faults else None
        if fault is not None and not fault.get("pass"):
            return await _apply_fault(request, fault)
        if model is _UNPARSEABLE:
            return web.Response(status=500, text="")  # the worker's getJson throws
        if len(json.dumps(model, separators=(",", ":"))) > MAX_PAYLOAD:
            return web.Response(status=400, text="Payload too large")
        auth = request.headers.get("Authorization", "")
        if not auth:
            return web.Response(status=401, text="Unauthorized")
        try:
            error = validate_async_log_model(model)
        except (TypeError, AttributeError, KeyError):
            return web.Response(status=500, text="")  # what a TypeError in the worker becomes
        if error is not None:
            return web.json_response({"error": error}, status=400)
        if auth != f"Bearer {self.api_key}":
            return web.json_response({"error": "Authentication failed"}, status=401)
        if self.strict:
            self.violations.extend(strict_problems(model))
        self.logs.append(model)
        request_id = model["providerRequest"]["meta"].get("Helicone-Request-Id") or str(uuid.uuid4())
        return web.Response(text="ok", headers={"helicone-id": str(request_id)})

    async def _invalid_path(self, request: web.Request) -> web.Response:
        return web.Response(status=400, text="invalid path")

    async def _list_requests(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": [{"path": r["path"], "json": r["json"]} for r in self.requests],
                "violations": self.violations,
            }
        )

    async def _reset(self, request: web.Request) -> web.Response:
        self.requests.clear()
        self.logs.clear()
        self.violations.clear()
        self.faults.clear()
        return web.json_response({})

    async def _add_faults(self, request: web.Request) -> web.Response:
        self.inject(*(await request.json()).get("next", []))
        return web.json_response({})


def validate_async_log_model(model: Any) -> str | None:
    """HW `validateAsyncLogModel`, JavaScript's typeof semantics included (null is an "object")."""
    if not isinstance(model, dict):
        raise TypeError("body is not an object")
    request, response, timing = (
        model.get("providerRequest"),
        model.get("providerResponse"),
        model.get("timing"),
    )
    if not request or not response or not timing:
        return "One of the required fields is missing, providerRequest, providerResponse, or timing"
    if not isinstance(request.get("url"), str):
        return "Invalid providerRequest: 'url' should be a string"
    if not _js_object(request.get("meta", _MISSING)):
        return "Invalid providerRequest: 'meta' should be an object"
    if "json" not in request:
        return "Invalid providerRequest: 'json' is undefined"
    if "json" not in response:
        return "Invalid providerResponse: 'json' is undefined"
    if not _js_number(response.get("status")):
        return "Invalid providerResponse: 'status' should be a number"
    if not _js_object(response.get("headers", _MISSING)):
        return "Invalid providerResponse: 'headers' should be an object"
    for end in ("startTime", "endTime"):
        for unit in ("seconds", "milliseconds"):
            if not _js_number(timing[end][unit] if unit in timing[end] else None):
                return f"Invalid timing: '{end}.{unit}' should be a number"
    start = timing["startTime"]["seconds"] * 1000 + timing["startTime"]["milliseconds"]
    end_ms = timing["endTime"]["seconds"] * 1000 + timing["endTime"]["milliseconds"]
    if start > end_ms:
        return "startTime cannot be greater than endTime"
    if start < 0 or end_ms < 0:
        return "startTime and endTime cannot be negative"
    return None


def strict_problems(model: dict[str, Any]) -> list[str]:
    """Checks stricter than the worker's, for mistakes it would swallow (research §5.2 item 4)."""
    problems = []
    unknown = set(model) - {"providerRequest", "providerResponse", "timing"}
    if unknown:
        problems.append(f"unknown top-level fields {sorted(unknown)}")
    timing = model["timing"]
    for end in ("startTime", "endTime"):
        seconds, millis = timing[end]["seconds"], timing[end]["milliseconds"]
        if not isinstance(seconds, int) or not 1_000_000_000 <= seconds <= 10_000_000_000:
            problems.append(f"timing.{end}.seconds {seconds!r} is not Unix seconds")
        if not isinstance(millis, int) or not 0 <= millis <= 999:
            problems.append(f"timing.{end}.milliseconds {millis!r} is not an int 0-999")
    meta = model["providerRequest"]["meta"] or {}
    for key, value in meta.items():
        if not key.lower().startswith("helicone-"):
            problems.append(f"meta key {key!r} is ignored by Helicone (use Helicone-Property-*)")
        if not isinstance(value, str):
            problems.append(f"meta {key!r} is not a string")
    request_id = meta.get("Helicone-Request-Id")
    if request_id is not None:
        try:
            uuid.UUID(request_id)
        except (TypeError, ValueError, AttributeError):
            problems.append(f"Helicone-Request-Id {request_id!r} is not a UUID")
    response = model["providerResponse"]
    if not isinstance(response["status"], int) or not 100 <= response["status"] <= 599:
        problems.append(f"providerResponse.status {response['status']!r} is not an HTTP status")
    body = response["json"]
    if not isinstance(body, dict):
        problems.append("providerResponse.json is not an object")
        return problems
    if "textBody" in response and not isinstance(response["textBody"], str):
        problems.append("providerResponse.textBody is not a string")
    request_json = model["providerRequest"]["json"]
    streamed = isinstance(request_json, dict) and request_json.get("stream") is True
    if streamed and not isinstance(body.get("streamed_data"), list):
        problems.append("request says stream: true but the response has no streamed_data list")
    url = model["providerRequest"]["url"]
    if 200 <= response["status"] < 300 and url.rstrip("/").endswith(("/chat/completions", "/embeddings")):
        usages = (
            [c.get("usage") for c in body["streamed_data"] if isinstance(c, dict)]
            if streamed
            else [body.get("usage")]
        )
        usage = next((u for u in usages if isinstance(u, dict)), None)
        if usage is None or not all(isinstance(v, int) for k, v in usage.items() if k.endswith("_tokens")):
            problems.append("no usage with int token counts for a 2xx chat/embeddings call")
    return problems


_MISSING = object()
_UNPARSEABLE = object()


def _js_object(value: Any) -> bool:
    return value is None or isinstance(value, dict | list)  # typeof null === "object"


def _js_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


async def _apply_fault(request: web.Request, fault: dict[str, Any]) -> web.StreamResponse:
    if fault.get("delay_ms"):
        await asyncio.sleep(fault["delay_ms"] / 1000)
    if fault.get("drop_connection"):
        assert request.transport is not None
        request.transport.abort()
        return web.Response()
    body = fault.get("body", "")
    if isinstance(body, dict):
        return web.json_response(body, status=fault.get("status", 200), headers=fault.get("headers", {}))
    return web.Response(status=fault.get("status", 500), headers=fault.get("headers", {}), text=body)
