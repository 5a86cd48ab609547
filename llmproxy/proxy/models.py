"""A token's ``allowed_models``: glob patterns (``gpt-4o*``, ``o3``, ``*-mini``) a request's model must match.

Case-sensitive, as the upstream compares model names; the verdict for a (patterns, model) pair is remembered
(bounded), so a restricted token's request costs one dict lookup after the first.
"""

from __future__ import annotations

import functools
from fnmatch import fnmatchcase

__all__ = ("model_allowed",)


@functools.lru_cache(maxsize=4096)
def model_allowed(patterns: tuple[str, ...], model: str) -> bool:
    return any(fnmatchcase(model, pattern) for pattern in patterns)
