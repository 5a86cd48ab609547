"""Withering tokens as strings: minted, hashed for the store, hinted for humans, read from a header.

Pure functions with no I/O, cheap enough for every request. The raw token is never stored or logged:
the store keeps ``hash_token(raw)``, people see ``token_hint(raw)``.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from llmproxy.errors import ProxyError, Refusal

__all__ = ("generate_token", "hash_token", "parse_bearer", "token_hint")

_PREFIX = "sk-"
# "sk-" then URL-safe base64 (no padding); 20..256 characters in all.
_TOKEN_SHAPE = re.compile(r"sk-[A-Za-z0-9_\-]{17,253}")
_HINT_CHARS = 4


def generate_token() -> str:
    """A new raw token: ``sk-`` and 43 URL-safe characters (256 random bits)."""
    return _PREFIX + secrets.token_urlsafe(32)


def hash_token(raw: str) -> str:
    """What the store keeps and looks tokens up by: the hex SHA-256 of the raw token."""
    return hashlib.sha256(raw.encode()).hexdigest()


def token_hint(raw: str) -> str:
    """``sk-abcd…wxyz``: enough to recognise a token, useless to use it."""
    body = raw[len(_PREFIX) :] if raw.startswith(_PREFIX) else raw
    if len(body) < 3 * _HINT_CHARS:  # too short to show both ends without showing most of it
        return _PREFIX + "…"
    return f"{_PREFIX}{body[:_HINT_CHARS]}…{body[-_HINT_CHARS:]}"


def parse_bearer(header: str | None) -> str:
    """The raw token of an ``Authorization: Bearer <token>`` header.

    MISSING_TOKEN when there is no header or it is blank; INVALID_TOKEN for another scheme, no
    credentials after the scheme, or a token not shaped like ours (checked before any lookup).
    """
    if header is None:
        raise ProxyError(Refusal.MISSING_TOKEN)
    parts = header.split(None, 1)
    if not parts:
        raise ProxyError(Refusal.MISSING_TOKEN)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise ProxyError(Refusal.INVALID_TOKEN)
    token = parts[1].strip()
    if _TOKEN_SHAPE.fullmatch(token) is None:
        raise ProxyError(Refusal.INVALID_TOKEN)
    return token
