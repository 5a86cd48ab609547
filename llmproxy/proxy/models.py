"""A token's ``allowed_models``: glob patterns (``gpt-4o*``, ``o3``, ``*-mini``) a request's model must match.

Case-sensitive, as the upstream compares model names; the verdict for a (patterns, model) pair is remembered
(bounded, and for names of ordinary length only), so a restricted token's request costs one dict lookup
after the first.
"""

from __future__ import annotations

import functools
from fnmatch import fnmatchcase

from llmproxy.errors import ProxyError, Refusal
from llmproxy.openai.kinds import endpoint_kind
from llmproxy.openai.usage import request_model

__all__ = ("model_allowed", "model_refusal")


_CACHED_MODEL_LENGTH = 256  # longer names are judged each time: the client writes them, the cache keeps them


def model_allowed(patterns: tuple[str, ...], model: str) -> bool:
    if len(model) > _CACHED_MODEL_LENGTH:
        return _matches(patterns, model)
    return _remembered(patterns, model)


def _matches(patterns: tuple[str, ...], model: str) -> bool:
    return any(fnmatchcase(model, pattern) for pattern in patterns)


_remembered = functools.lru_cache(maxsize=4096)(_matches)


def model_refusal(
    patterns: tuple[str, ...], path: str, body: bytes | None, plain: bytes
) -> ProxyError | None:
    """403 ``model_not_allowed`` naming the allowed list when the request's model matches none of
    ``patterns`` (or it names none where a model is needed); None when it may go."""
    model = request_model(plain or body or b"")
    if model is not None and model_allowed(patterns, model):
        return None
    if model is None and (body is None or endpoint_kind(path) is None):
        return None  # no model named where none is needed (GET /v1/models, files)
    named = f"Model {model!r} is" if model is not None else "A request naming no model is"
    return ProxyError(
        Refusal.MODEL_NOT_ALLOWED,
        f"{named} not allowed for this token; allowed models: {', '.join(patterns)}",
        param="model",
    )
