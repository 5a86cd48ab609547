"""What of a request never reaches an event: credentials in headers and in the query string.

A credential is recognised by its name (``authorization``, ``x-api-key``, ``?api_key=``, ``?token=`` …)
or by its value (``Bearer …``, ``sk-…``) under any name; it becomes ``[REDACTED]``, everything else
is kept exactly as received.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote_plus

__all__ = ("REDACTED", "redact_headers", "redact_query")

REDACTED = "[REDACTED]"
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
_SECRET_NAME_PARTS = ("key", "token", "secret", "auth")
_PUBLIC_PREFIXES = ("x-ratelimit-",)  # x-ratelimit-remaining-tokens etc. are counts, not credentials
_SECRET_VALUE = re.compile(r"\b(?:bearer|basic)\s+\S|sk-[A-Za-z0-9_\-]{8,}", re.IGNORECASE)
# Query parameter names, folded to letters and digits (api_key, apiKey, API-KEY → apikey), that name a
# credential by their last word; max_tokens or api-version do not.
_SECRET_PARAM = re.compile(
    r"(?:key|token|secret|password|passwd|pwd|auth|authorization|credentials?|signature|sig|jwt)$"
)
_NOT_ALNUM = re.compile(r"[^a-z0-9]")

_names: dict[str, bool] = {}  # lower-cased header name -> whether it names a secret (bounded below)


def _secret_name(name: str) -> bool:
    secret = name in _SECRET_HEADERS or (
        not name.startswith(_PUBLIC_PREFIXES) and any(part in name for part in _SECRET_NAME_PARTS)
    )
    if len(_names) >= 1024:  # clients may send any names: keep the table small
        _names.clear()
    _names[name] = secret
    return secret


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-cased names; credentials (by name, or a bearer/sk- value under any name) become [REDACTED]."""
    redacted = {}
    names = _names
    for name, value in headers.items():
        lower = name.lower()
        secret = names.get(lower)
        if secret is None:
            secret = _secret_name(lower)
        if not secret:
            if value.isascii():  # the common case: three substring scans decide most values, no regex
                folded = value.lower()
                secret = (
                    "sk-" in folded or "bearer" in folded or "basic" in folded
                ) and _SECRET_VALUE.search(value) is not None
            else:
                secret = _SECRET_VALUE.search(value) is not None
        redacted[lower] = REDACTED if secret else value
    return redacted


def _secret_value(raw: str) -> bool:
    value = unquote_plus(raw) if "%" in raw or "+" in raw else raw
    return _SECRET_VALUE.search(value) is not None


def redact_query(query: str) -> str:
    """The raw query (no ``?``) with each credential's value replaced by [REDACTED]: by its parameter's
    name, or by a bearer/sk- value under any name (a bare part is judged by its value alone)."""
    if not query:
        return query
    parts = query.split("&")
    redacted = False
    for i, part in enumerate(parts):
        name, equals, value = part.partition("=")
        if not equals:
            if _secret_value(part):
                parts[i], redacted = REDACTED, True
        elif _SECRET_PARAM.search(_NOT_ALNUM.sub("", unquote_plus(name).lower())) or _secret_value(value):
            parts[i], redacted = f"{name}={REDACTED}", True
    return "&".join(parts) if redacted else query
