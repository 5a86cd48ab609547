"""The `helicone` backend: one `POST {endpoint}/custom/v1/log` (manual logger) per proxied POST.

Real start/end timing from the event; streams go as `{"streamed_data": [chunk, ...]}` with the
request's `stream: true` kept (Helicone re-parses them as SSE); usage is injected when the upstream
body lacks it. Helicone has no batch endpoint, so a batch is sent with bounded concurrency and the
ids it accepted are remembered: when the dispatcher re-sends a batch after a failure, only the
events not yet accepted are posted again. Across processes, Helicone itself is keyed by
`Helicone-Request-Id` (the event id as a UUID), stable across redeliveries.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import msgspec

from llmproxy.dispatch.backends.base import (
    DeliveryError,
    RecentIds,
    error_for_exception,
    error_for_status,
    post_json,
)
from llmproxy.dispatch.transform import (
    LlmCall,
    body_bytes,
    ended_epoch,
    flat_metadata,
    read_call,
    run_uuid,
    started_epoch,
)
from llmproxy.events.model import Event

__all__ = ("DEFAULT_ENDPOINT", "HeliconeBackend", "helicone_log")

DEFAULT_ENDPOINT = "https://api.worker.helicone.ai"
_DROPPED_HEADERS = frozenset({"set-cookie", "authorization", "cookie", "proxy-authorization"})


class HeliconeBackend:
    """Sends each proxied call to Helicone's async log endpoint."""

    name = "helicone"

    def __init__(
        self,
        endpoint: str,
        api_key: str,
        session: aiohttp.ClientSession | None = None,
        *,
        concurrency: int = 8,
        timeout_s: float = 30.0,
    ) -> None:
        self.url = (endpoint or DEFAULT_ENDPOINT).rstrip("/") + "/custom/v1/log"
        self.concurrency = max(1, concurrency)
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._accepted = RecentIds(10_000)  # a few batches: enough to skip re-sends within a retry

    async def send(self, batch: list[Event]) -> None:
        pending = iter([e for e in batch if e.method == "POST" and e.id not in self._accepted])
        failures: list[DeliveryError] = []
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)

        async def post_each() -> None:
            for event in pending:  # the workers share one iterator: each event is posted once
                if any(f.transient or f.whole_batch for f in failures):
                    return  # the batch fails anyway: do not hammer a struggling server
                try:
                    await self._post(event)
                except Exception as exc:
                    failures.append(error_for_exception(self.name, exc))
                else:
                    self._accepted.add(event.id)

        async with asyncio.TaskGroup() as group:
            for _ in range(self.concurrency):
                group.create_task(post_each())
        if failures:  # a transient failure first: the dispatcher retries, the refused are isolated later
            raise min(failures, key=lambda f: (not f.transient, not f.whole_batch))

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def _post(self, event: Event) -> None:
        assert self._session is not None
        body = msgspec.json.encode(helicone_log(event))
        status, headers, answer = await post_json(
            self._session, self.url, body, self._headers, backend=self.name
        )
        if status >= 300:
            raise error_for_status(self.name, status, headers, answer)
        _check_answer(answer)


def helicone_log(event: Event) -> dict[str, Any]:
    """The manual-logger body for one proxied call (research/backends.md §2.2)."""
    call = read_call(event)
    started, ended = started_epoch(event), ended_epoch(event)
    meta = {
        "Helicone-Request-Id": run_uuid(event),
        "Helicone-Property-Request-Id": event.request_id,
        "Helicone-Property-Project-Id": event.project_id,
        "Helicone-Property-Token-Id": event.token_id,
        **{k: str(v) for k, v in flat_metadata(event, "Helicone-Property-Token-").items()},
    }
    user = (call.request or {}).get("user")
    if isinstance(user, str) and user:
        meta["Helicone-User-Id"] = user
    timing: dict[str, Any] = {"startTime": _timestamp(started), "endTime": _timestamp(ended)}
    if event.ttfb_ms is not None:
        timing["timeToFirstToken"] = round(event.ttfb_ms)
    url = event.path + (f"?{event.query}" if event.query else "")
    request = call.request if call.request is not None else {}
    response = _response_body(event, call)
    if request.get("stream") is True and "streamed_data" not in response["json"]:
        request = {**request, "stream": False}  # else Helicone parses the body as SSE and fails
    elif request.get("stream") is not True and "streamed_data" in response["json"]:
        request = {**request, "stream": True}  # (a request body that could not be read) else it does not
    return {
        "providerRequest": {"url": url, "json": request, "meta": meta},
        "providerResponse": {
            "status": event.status,
            "headers": {
                k.lower(): v for k, v in event.response_headers.items() if k.lower() not in _DROPPED_HEADERS
            },
            **response,
        },
        "timing": timing,
    }


def _response_body(event: Event, call: LlmCall) -> dict[str, Any]:
    if event.stream and call.chunks:
        chunks = list(call.chunks)
        if call.usage and not any(isinstance(c, dict) and c.get("usage") for c in chunks):
            chunks.append(_usage_chunk(call))  # as the upstream sends it with include_usage
        return {"json": {"streamed_data": chunks}}
    if call.response is not None:
        if call.usage and "usage" not in call.response and event.status < 400:
            return {"json": {**call.response, "usage": call.usage}}
        return {"json": call.response}
    if event.body_encoding == "base64":
        text = f"<{len(body_bytes(event.response_body, 'base64'))} bytes, not text>"
    else:
        text = event.response_body or event.error or ""
    if call.usage and event.status < 400:
        # An answer that cannot be sent as JSON (cut by the capture bound, nested too deeply) still has
        # usage; Helicone reads it from `json` only, ignoring `json` when there is a `textBody`.
        return {"json": {"model": call.model, "usage": call.usage, "body": text}}
    return {"json": {}, "textBody": text}


def _usage_chunk(call: LlmCall) -> dict[str, Any]:
    first = next((c for c in call.chunks if isinstance(c, dict)), {})
    return {
        "id": first.get("id", ""),
        "object": "chat.completion.chunk",
        "created": first.get("created", 0),
        "model": first.get("model", call.model or ""),
        "choices": [],
        "usage": call.usage,
    }


def _timestamp(epoch: float) -> dict[str, int]:
    millis = round(epoch * 1000)
    return {"seconds": millis // 1000, "milliseconds": millis % 1000}


def _check_answer(answer: bytes) -> None:
    """Helicone answers 200 `{"error": ...}` when logging failed after validation."""
    if not answer.lstrip().startswith(b"{"):
        return  # "ok"
    try:
        doc = msgspec.json.decode(answer)
    except msgspec.DecodeError:
        return
    if isinstance(doc, dict) and doc.get("error"):
        message = str(doc["error"])
        auth = "auth" in message.lower()  # a key problem will not heal by retrying
        raise DeliveryError(f"helicone: {message}", transient=not auth, whole_batch=auth)
