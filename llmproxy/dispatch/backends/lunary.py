"""The `lunary` backend: each proxied LLM call becomes a Lunary run, `start` then `end` (or `error`).

One `POST {endpoint}/v1/runs/ingest` per batch with body `{"events": [...]}` (a bare array is a 500
on the real server). The runId is the event id as a UUID, so a re-sent batch is harmless: Lunary
answers "already exists" for a duplicate start, which counts as delivered. Any other per-run
failure in the 200 answer is raised as permanent, so the dispatcher isolates and dead-letters it.
Non-POST requests and endpoints that are not model calls are not runs and are skipped.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec

from llmproxy.dispatch.backends.base import DeliveryError, error_for_status, post_json
from llmproxy.dispatch.transform import ended_epoch, flat_metadata, iso_ms, read_call, run_uuid, started_epoch
from llmproxy.events.model import Event
from llmproxy.openai.kinds import EndpointKind

__all__ = ("DEFAULT_ENDPOINT", "LunaryBackend", "lunary_events")

DEFAULT_ENDPOINT = "https://api.lunary.ai"
_RUN_TYPES = {
    EndpointKind.CHAT: "llm",
    EndpointKind.COMPLETIONS: "llm",
    EndpointKind.RESPONSES: "llm",
    EndpointKind.EMBEDDINGS: "embed",
}
_DUPLICATE = "already exists"


class LunaryBackend:
    """Sends runs to Lunary's ingestion API with the project's public key."""

    name = "lunary"

    def __init__(
        self,
        endpoint: str,
        api_key: str,
        session: aiohttp.ClientSession | None = None,
        *,
        timeout_s: float = 30.0,
    ) -> None:
        self.url = (endpoint or DEFAULT_ENDPOINT).rstrip("/") + "/v1/runs/ingest"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def send(self, batch: list[Event]) -> None:
        events = [e for event in batch for e in lunary_events(event)]
        if not events:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        status, headers, body = await post_json(
            self._session, self.url, msgspec.json.encode({"events": events}), self._headers, backend=self.name
        )
        if status >= 300:
            raise error_for_status(self.name, status, headers, body)
        _check_results(body)

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None


def lunary_events(event: Event) -> list[dict[str, Any]]:
    """The Lunary `start` + `end`/`error` events for one proxied call ([] if it is not a model call)."""
    call = read_call(event)
    run_type = _RUN_TYPES.get(call.kind) if call.kind is not None else None
    if event.method != "POST" or run_type is None:
        return []
    run_id = run_uuid(event)
    started = started_epoch(event)
    ended = max(ended_epoch(event), started + 0.001)  # Lunary sorts by timestamp: end after start
    base: dict[str, Any] = {"type": run_type, "runId": run_id, "name": call.model or "unknown"}
    request = call.request or {}
    start: dict[str, Any] = {
        **base,
        "event": "start",
        "timestamp": iso_ms(started),
        "input": call.input if call.input is not None else [],
        "params": call.params,
        "tags": ["llm-proxy"],
        "runtime": "llm-proxy",
        "metadata": {
            "request_id": event.request_id,
            "project_id": event.project_id,
            "token_id": event.token_id,
            "path": event.path,
            "status": event.status,
            "duration_ms": event.duration_ms,
            "stream": event.stream,
            **flat_metadata(event, "token."),
        },
    }
    if isinstance(request.get("user"), str) and request["user"]:
        start["userId"] = request["user"]
    if call.error is not None or event.status >= 400:
        end: dict[str, Any] = {
            **base,
            "event": "error",
            "timestamp": iso_ms(ended),
            "error": {"message": call.error or f"HTTP {event.status}"},
        }
    else:
        end = {**base, "event": "end", "timestamp": iso_ms(ended), "output": call.output}
        tokens = _tokens_usage(call.usage)
        if tokens is not None:
            end["tokensUsage"] = tokens
    return [start, end]


def _tokens_usage(usage: dict[str, Any] | None) -> dict[str, int] | None:
    if not usage:
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    tokens = {"prompt": prompt, "completion": completion}
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
        tokens["promptCached"] = details["cached_tokens"]
    return tokens


def _check_results(body: bytes) -> None:
    """Lunary answers 200 even when runs failed; a duplicate start is a redelivery, not a failure."""
    try:
        answer = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return  # an older server answering without results: accepted
    results = answer.get("results") if isinstance(answer, dict) else None
    failed = [
        r
        for r in results or ()
        if isinstance(r, dict) and r.get("success") is False and _DUPLICATE not in str(r.get("error", ""))
    ]
    if failed:
        detail = "; ".join(f"{r.get('id')}: {r.get('error')}" for r in failed[:3])
        raise DeliveryError(f"lunary: {len(failed)} run events refused: {detail}", transient=False)
