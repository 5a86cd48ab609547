"""Secrets kept out of events, logs and the audit trail: one set of rules for what a secret looks like.

In an event, a credential in a header or the query string is recognised by its name (``authorization``,
``x-api-key``, ``?api_key=``, ``?token=`` …) or by its value under any name, and becomes ``[REDACTED]``;
everything else is kept exactly as received. In free text (log lines, audit fields) each secret is
masked where it stands. A secret value is an ``sk-`` key of 8+ characters (any case, not the tail of
a word such as ``task-``) or a ``Bearer``/``Basic`` credential.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote_plus

__all__ = ("REDACTED", "redact_headers", "redact_query", "redact_text")

REDACTED = "[REDACTED]"
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
_SECRET_NAME_PARTS = ("key", "token", "secret", "auth")
_PUBLIC_PREFIXES = ("x-ratelimit-",)  # x-ratelimit-remaining-tokens etc. are counts, not credentials
# The one rule for a secret value, the widest of the three it replaces (logs took sk- keys from 12
# characters on and no Basic, audit lower-case sk- only and no Basic, events no bearer/basic glued to a
# word); only a key glued to a letter or digit (task-…, disk-…) is not one, as audit had it.
# Group 1: a key's body; group 2: a credential's scheme and the spaces after it.
_SECRET_VALUE = re.compile(r"(?<![A-Za-z0-9])sk-([A-Za-z0-9_\-]{8,})|((?:bearer|basic)\s+)\S+", re.IGNORECASE)
_HINT_CHARS = 4  # shown from each end of a key long enough (3 x 4): what auth.tokens.token_hint shows
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


def redact_text(text: str, *, key_tail: bool = False) -> str:
    """``text`` with each secret masked in place: a credential's value becomes ``[redacted]``; a key
    shows its first 4 characters (``sk-AbCd…``, and its last 4 with ``key_tail``) if it has 12 or more."""
    if key_tail:
        return _SECRET_VALUE.sub(_key_hint_with_tail, text)
    return _SECRET_VALUE.sub(_key_hint, text)


def _key_hint(match: re.Match[str]) -> str:
    body = match.group(1)
    if body is None:
        return match.group(2) + "[redacted]"
    shown = body[:_HINT_CHARS] if len(body) >= 3 * _HINT_CHARS else ""
    return f"{match.group(0)[:3]}{shown}…"


def _key_hint_with_tail(match: re.Match[str]) -> str:
    body = match.group(1)
    if body is None or len(body) < 3 * _HINT_CHARS:
        return _key_hint(match)
    return f"{match.group(0)[:3]}{body[:_HINT_CHARS]}…{body[-_HINT_CHARS:]}"
