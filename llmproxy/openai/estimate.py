"""Token usage counted locally, for a token-consuming exchange whose upstream sent none.

Parses the whole bodies and runs the tokenizer: callers run `estimate_usage` off the event loop.
"""

from __future__ import annotations

from typing import Any

import msgspec

from llmproxy.events.model import Usage
from llmproxy.openai.kinds import EndpointKind, endpoint_kind
from llmproxy.openai.sse import data_payloads
from llmproxy.openai.tokencount import TokenCounter, spoken_text

__all__ = ("estimate_usage",)

# output keys holding no text the model wrote (base64 audio, ids, roles)
_SILENT_KEYS = frozenset({"type", "id", "index", "role", "annotations", "audio", "logprobs", "obfuscation"})
_RESPONSES_OUTPUT_DELTAS = frozenset(
    {"response.output_text.delta", "response.function_call_arguments.delta", "response.refusal.delta"}
)


def _json(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):  # not JSON, cut by the capture bound, or nested too deeply
        return None


def _text(value: Any) -> str:
    """Text an output value carries: strings, text parts, tool names and arguments (ids and types skipped)."""
    return spoken_text(value, _SILENT_KEYS)


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) for v in value)


def _input_tokens(value: Any, model: str | None, counter: TokenCounter) -> int:
    """Completions `prompt` / embeddings `input`: a string, token ids, or a list of either (the text of
    anything else counted, however nested)."""
    total = 0
    for item in value if isinstance(value, list) and not _token_ids(value) else (value,):
        if _token_ids(item):
            total += len(item)
        elif isinstance(item, str | list | dict):
            total += counter.count_text(spoken_text(item, frozenset()), model)
    return total


def _prompt_tokens(
    kind: EndpointKind, request: Any, raw: bytes, model: str | None, counter: TokenCounter
) -> int:
    if not isinstance(request, dict):  # truncated or not JSON: count what was captured
        return counter.count_text(raw.decode("utf-8", "replace"), model)
    if kind is EndpointKind.CHAT:
        messages = request.get("messages")
        return counter.count_chat_prompt(messages, model) if isinstance(messages, list) else 0
    if kind is EndpointKind.RESPONSES:
        items = request.get("input")
        messages = [{"role": "user", "content": items}] if isinstance(items, str) else []
        messages += items if isinstance(items, list) else []
        if isinstance(request.get("instructions"), str):
            messages.insert(0, {"role": "system", "content": request["instructions"]})
        return counter.count_chat_prompt(messages, model)
    return _input_tokens(
        request.get("prompt" if kind is EndpointKind.COMPLETIONS else "input"), model, counter
    )


def _json_output_texts(kind: EndpointKind, response: dict[str, Any]) -> list[str]:
    if kind is EndpointKind.RESPONSES:
        return [
            _text(item.get("content")) + _text(item.get("name")) + _text(item.get("arguments"))
            for item in response.get("output") or []
            if isinstance(item, dict) and item.get("type") != "reasoning"
        ]
    texts = []
    for choice in response.get("choices") or []:
        if isinstance(choice, dict):
            texts.append(_text(choice.get("text")) + _text(choice.get("message")))
    return texts


def _sse_output_texts(kind: EndpointKind, body: bytes) -> list[str]:
    pieces: dict[Any, list[str]] = {}
    for data in data_payloads(body):
        chunk = _json(data)
        if not isinstance(chunk, dict):
            continue
        if kind is EndpointKind.RESPONSES:
            if chunk.get("type") in _RESPONSES_OUTPUT_DELTAS and isinstance(chunk.get("delta"), str):
                key = (chunk.get("output_index"), chunk.get("type"))
                pieces.setdefault(key, []).append(chunk["delta"])
            continue
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict):
                text = _text(choice.get("text")) + _text(choice.get("delta"))
                pieces.setdefault(choice.get("index"), []).append(text)
    return ["".join(parts) for parts in pieces.values()]


def estimate_usage(
    path: str,
    request_body: bytes,
    response_body: bytes,
    stream: bool,
    model: str | None,
    counter: TokenCounter,
) -> Usage | None:
    """Local token counts for a token-consuming endpoint (None for any other); decoded bodies in."""
    kind = endpoint_kind(path)
    if kind is None:
        return None
    prompt = _prompt_tokens(kind, _json(request_body), request_body, model, counter)
    completion = 0
    if kind is not EndpointKind.EMBEDDINGS:
        if stream:
            texts = _sse_output_texts(kind, response_body)
        else:
            response = _json(response_body)
            if isinstance(response, dict):
                texts = _json_output_texts(kind, response)
            else:  # truncated: count what was captured
                texts = [response_body.decode("utf-8", "replace")]
        completion = counter.count_texts(texts, model)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
