"""What the proxy lets through, decided before authentication: paths, methods, headers, origins, params.

Pure: an ``ApiConfig`` is compiled once into a ``Policy`` whose checks raise ``ProxyError``. Paths are
checked on their decoded form after refusing every trick that could make the upstream resolve a
different path than the one matched (dot segments, ``//``, backslashes, encoded slashes, control chars).
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import unquote

import msgspec

from llmproxy.config import ApiConfig
from llmproxy.errors import ProxyError, Refusal

__all__ = ("Policy", "allow_origin", "split_target")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENCODED_SEPARATOR = re.compile(r"%(?:2f|5c)", re.IGNORECASE)
_HEADER_LIST = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(?:\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")
_DEFAULT_ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID"
_EXPOSE_HEADERS = (
    "X-Request-ID, X-Upstream-Request-ID, Server-Timing, Retry-After, OpenAI-Processing-MS, "
    "X-RateLimit-Limit-Requests, X-RateLimit-Limit-Tokens, X-RateLimit-Remaining-Requests, "
    "X-RateLimit-Remaining-Tokens, X-RateLimit-Reset-Requests, X-RateLimit-Reset-Tokens, "
    "X-PROXY-CACHE, X-PROXY-CACHE-KEY, Cache-Status, Age"
)
_MAX_DECODE_ROUNDS = 3
_decode_json = msgspec.json.Decoder().decode
_encode_json = msgspec.json.encode


def split_target(raw_target: str) -> tuple[str, str]:
    """The request target exactly as received → (raw path, raw query without ``?``)."""
    path, _, query = raw_target.partition("?")
    return path, query


def _refuse_path(reason: str) -> ProxyError:
    return ProxyError(Refusal.ENDPOINT_NOT_ALLOWED, f"Endpoint not allowed: {reason}")


def _check_segments(path: str) -> None:
    if "\\" in path:
        raise _refuse_path("backslash in path")
    if _CONTROL.search(path):
        raise _refuse_path("control character in path")
    if "//" in path:
        raise _refuse_path("empty path segment")
    for segment in path.split("/"):
        if segment == "." or segment == "..":
            raise _refuse_path("dot segment in path")


def normalise_path(raw_path: str) -> str:
    """The path as the upstream resolves it (decoded once), or ENDPOINT_NOT_ALLOWED for a path trick.

    Tricks are looked for at every level of percent-decoding, so double encoding (``%252e``) is
    refused too: the proxy and any upstream must agree on the path's segments.
    """
    if not raw_path.startswith("/"):
        raise _refuse_path("path must start with /")
    _check_segments(raw_path)
    if "%" not in raw_path:
        return raw_path
    level = raw_path
    resolved = ""
    for _ in range(_MAX_DECODE_ROUNDS):
        if _ENCODED_SEPARATOR.search(level):
            raise _refuse_path("encoded path separator")
        try:
            decoded = unquote(level, errors="strict")
        except UnicodeDecodeError:
            raise _refuse_path("path is not UTF-8 once decoded") from None
        _check_segments(decoded)
        resolved = resolved or decoded
        if decoded == level or "%" not in decoded:
            return resolved
        level = decoded
    raise _refuse_path("too many levels of percent-encoding")


def _too_deep() -> ProxyError:
    # JSON nested ~1000 levels deep cannot be decoded here, nor its values re-encoded: unchecked, the
    # whitelist could not tell what it hides, so it is refused whatever its declared type
    return ProxyError(Refusal.BAD_REQUEST, "Request body is nested too deeply")


def _stringify(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return _encode_json(value).decode()
    except RecursionError:
        raise _too_deep() from None


def allow_origin(headers: MutableMapping[str, str], origin: str) -> None:
    """Let a browser at an (already allowed) ``origin`` read this answer: a proxied one, a cached one or
    a refusal alike, with ``Origin`` merged into whatever ``Vary`` the answer already has."""
    headers["Access-Control-Allow-Origin"] = origin
    headers["Access-Control-Expose-Headers"] = _EXPOSE_HEADERS
    vary = headers.get("Vary")
    if not vary:
        headers["Vary"] = "Origin"
    elif "origin" not in vary.lower():
        headers["Vary"] = vary + ", Origin"


class _Whitelist:
    """One parameter's allowed values: fnmatch-style globs compiled into one regex."""

    __slots__ = ("name", "patterns", "_rx")

    def __init__(self, name: str, patterns: tuple[str, ...]) -> None:
        self.name = name
        self.patterns = patterns
        self._rx = re.compile("|".join(fnmatch.translate(p) for p in patterns) or r"(?!)")

    def check(self, value: Any) -> None:
        values = value if isinstance(value, list) and value else (value,)
        for item in values:
            text = _stringify(item)
            if not self._rx.match(text):
                shown = text if len(text) <= 100 else text[:100] + "…"
                raise ProxyError(
                    Refusal.PARAM_NOT_ALLOWED,
                    f"Parameter '{self.name}' value '{shown}' is not allowed",
                    param=self.name,
                )


class Policy:
    """``ApiConfig`` compiled once; each check raises the refusal of SPEC §5 or returns quietly."""

    def __init__(self, api: ApiConfig) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        for entry in api.allowed_endpoints:
            if entry.endswith("/*"):
                prefixes.append(entry[:-2])
            else:
                exact.add(entry)
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)
        self._prefixes_slash = tuple(p + "/" for p in prefixes)
        self._any_endpoint = not api.allowed_endpoints
        self._methods = frozenset(m.upper() for m in api.allowed_methods)
        self._origins = frozenset(api.allowed_origins)
        self._required = tuple(h for h in api.required_headers if h)
        self._params = {name: _Whitelist(name, tuple(p)) for name, p in api.param_whitelist.items() if p}
        self._param_keys = tuple(f'"{name}"'.encode() for name in self._params)
        self.max_body_bytes = api.max_body_bytes
        methods = api.allowed_methods or ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
        self._allow_methods = ", ".join(m.upper() for m in methods)

    # --- request line ------------------------------------------------------------------------

    def endpoint(self, raw_path: str) -> str:
        """Refuse path tricks, then match the decoded path: exact, or ``prefix/*`` = prefix and below."""
        path = normalise_path(raw_path)
        if self._any_endpoint or path in self._exact:
            return path
        if path in self._prefixes or path.startswith(self._prefixes_slash):
            return path
        raise ProxyError(Refusal.ENDPOINT_NOT_ALLOWED, f"Endpoint not allowed: {path[:200]}")

    def method(self, method: str) -> None:
        if self._methods and method not in self._methods:
            raise ProxyError(Refusal.METHOD_NOT_ALLOWED, f"Method not allowed: {method[:20]}")

    # --- headers and origin ------------------------------------------------------------------

    def headers(self, headers: Mapping[str, str]) -> None:
        """Required headers present, and Origin (when sent) in the allowed list (when there is one)."""
        for name in self._required:
            if not headers.get(name):
                if name.lower() == "origin":
                    raise ProxyError(Refusal.ORIGIN_REQUIRED)
                raise ProxyError(Refusal.HEADER_REQUIRED, f"Required header missing: {name}")
        if not self.origin_allowed(headers.get("Origin")):
            raise ProxyError(Refusal.ORIGIN_NOT_ALLOWED)

    def origin_allowed(self, origin: str | None) -> bool:
        return origin is None or not self._origins or origin in self._origins

    def preflight_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The answer to a CORS preflight (OPTIONS); no authentication, nothing forwarded."""
        origin = headers.get("Origin")
        if origin is None:
            return {"Allow": self._allow_methods}
        requested = headers.get("Access-Control-Request-Headers", "").strip()
        allow_headers = requested if requested and _HEADER_LIST.match(requested) else _DEFAULT_ALLOW_HEADERS
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": self._allow_methods,
            "Access-Control-Allow-Headers": allow_headers,
            "Access-Control-Expose-Headers": _EXPOSE_HEADERS,
            "Access-Control-Max-Age": "86400",
            "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        }

    # --- body ------------------------------------------------------------------------------

    def body_size(self, content_length: int | None) -> None:
        """Refuse a declared body over ``max_body_bytes`` before reading a byte of it."""
        if content_length is not None and content_length > self.max_body_bytes:
            raise self.too_large()

    def too_large(self) -> ProxyError:
        return ProxyError(
            Refusal.BODY_TOO_LARGE, f"Request body larger than {self.max_body_bytes} bytes is not accepted"
        )

    def inspects_body(self, content_type: str) -> bool:
        """Whether the param whitelist needs the body: JSON bodies (or untyped ones) when there is one."""
        if not self._params:
            return False
        ct = content_type.lower()
        return ct.startswith("application/json") or "+json" in ct or ct == "" or ct.startswith("text/plain")

    def params(self, body: bytes, content_type: str) -> None:
        """Top-level values of whitelisted params must match one of their globs."""
        try:
            doc = _decode_json(body)
        except RecursionError:
            raise _too_deep() from None
        except (
            msgspec.DecodeError,
            UnicodeDecodeError,
        ):  # msgspec raises the latter for bad UTF-8 in strings
            if content_type.lower().startswith("application/json") or "+json" in content_type.lower():
                raise ProxyError(Refusal.BAD_REQUEST, "Request body is not valid JSON") from None
            return  # not JSON for anybody: nothing to whitelist
        if not isinstance(doc, dict):
            return
        if self._may_repeat_keys(body):
            self._refuse_repeated_keys(body)
        for name, whitelist in self._params.items():
            if name in doc:
                whitelist.check(doc[name])

    def _may_repeat_keys(self, body: bytes) -> bool:
        # A key can be spelled twice plainly, or hidden behind escapes ("mod\u0065l"): only then
        # pay for a pairs-preserving parse. Parsers disagree on which duplicate wins.
        if b"\\u" in body or b"\\/" in body:
            return True
        return any(body.count(key) > 1 for key in self._param_keys)

    def _refuse_repeated_keys(self, body: bytes) -> None:
        try:
            pairs = json.loads(body, object_pairs_hook=lambda kv: kv)
        except (ValueError, RecursionError):
            raise ProxyError(Refusal.BAD_REQUEST, "Request body is not valid JSON") from None
        seen: set[str] = set()
        for key, _ in pairs:
            if key in self._params:
                if key in seen:
                    raise ProxyError(
                        Refusal.PARAM_NOT_ALLOWED, f"Parameter '{key}' is given more than once", param=key
                    )
                seen.add(key)
